"""``healthscore rescore --days N``: recompute the daily history of the last N days
with the current score model, from the stored windows.

Past days (today − N + 1 … yesterday) get their history row rewritten through the
same evaluation code as live scoring (``evaluate_accounts`` with ``current=False``:
no current-score change, nothing published). Today's score is left to the
running service: every account is marked stale so its sweeper re-evaluates it
with the model it runs and publishes the snapshots alerts need.

Limits: contact roles and ``left_company`` apply "as of now" to every window
(SPEC §4), so a rescored past day uses today's roles; windows older than what is
stored (400 days) are empty.
"""

from __future__ import annotations

from datetime import UTC, date, timedelta

from services.scoring import store
from services.scoring.clock import Clock
from services.scoring.consumer import in_transaction
from services.scoring.evaluation import evaluate_accounts
from services.scoring.score_model import ScoreModel
from services.scoring.settings import ScoringSettings


async def rescore(
    settings: ScoringSettings, days: int, model: ScoreModel, clock: Clock, chunk: int = 1000
) -> int:
    """Returns the number of history rows written."""
    pool = await store.create_pool(settings.database_url, size=2)
    written = 0
    try:
        now = clock.now()
        today = now.astimezone(UTC).date()
        for day in store.days_back(today - timedelta(days=1), max(0, days - 1)):
            after = ""
            while True:

                async def work(pg: store.Pg, day: date = day, after: str = after) -> list[str]:
                    ids = await store.accounts_active_on(pg, day, after, chunk)
                    await evaluate_accounts(
                        pg,
                        ids,
                        model=model,
                        as_of=day,
                        now=now,
                        trigger="rescore",
                        current=False,
                    )
                    return ids

                ids = await in_transaction(pool, work)
                written += len(ids)
                if len(ids) < chunk:
                    break
                after = ids[-1]
        async with pool.acquire() as pg:
            await store.mark_for_reevaluation(pg)
    finally:
        await pool.close()
    return written
