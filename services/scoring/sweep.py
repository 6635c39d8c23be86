"""The sweeper: time-driven re-evaluation (SPEC §4) and snapshot republishing.

Every account with activity in the last 400 days is re-evaluated at least once
per UTC day and at most ``sweep_interval`` seconds after its last evaluation,
through the same code path as event-driven evaluations (``evaluate_accounts``),
so silence changes KPIs and scores with no new event. Nothing is applied to the
windows here: a sweep only reads them, so it can never double-apply an event.

Several scoring processes may sweep at once: stale accounts are claimed with
``FOR UPDATE SKIP LOCKED`` inside the evaluation's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, date, datetime, timedelta

import asyncpg  # type: ignore[import-untyped]  # no stubs published
from aiokafka import AIOKafkaProducer

from services.scoring import store
from services.scoring.clock import Clock
from services.scoring.consumer import in_transaction, publish
from services.scoring.evaluation import Snapshot, evaluate_accounts
from services.scoring.score_model import ScoreModel
from services.scoring.settings import ScoringSettings

log = logging.getLogger(__name__)


async def sweep_once(
    settings: ScoringSettings,
    pool: store.Pool,
    producer: AIOKafkaProducer | None,
    model: ScoreModel,
    clock: Clock,
) -> int:
    """Re-evaluate every stale account (in chunks of ``sweep_batch``), republish
    unpublished snapshots; returns how many accounts were evaluated."""
    total = 0
    while True:
        now = clock.now()
        today = now.astimezone(UTC).date()

        async def work(
            pg: store.Pg, now: datetime = now, today: date = today
        ) -> tuple[int, list[Snapshot]]:
            ids = await store.stale_accounts(
                pg,
                today=today,
                stale_before=now - timedelta(seconds=settings.sweep_interval),
                limit=settings.sweep_batch,
            )
            done = await evaluate_accounts(
                pg, ids, model=model, as_of=today, now=now, trigger="sweep"
            )
            return len(ids), done.snapshots

        n, snapshots = await in_transaction(pool, work)
        if producer is not None:
            await publish(pool, producer, settings.topics.health, snapshots)
        total += n
        if n < settings.sweep_batch:
            break
    if producer is not None:
        await republish(settings, pool, producer, model, clock)
    if today_prune_due(clock):
        async with pool.acquire() as pg:
            await store.prune_processed(pg, clock.now())
    return total


_last_prune: dict[str, object] = {}


def today_prune_due(clock: Clock) -> bool:
    """Prune the dedup table at most once per hour per process."""
    now = clock.now()
    last = _last_prune.get("at")
    if last is None or now - last > timedelta(hours=1):  # type: ignore[operator]
        _last_prune["at"] = now
        return True
    return False


async def republish(
    settings: ScoringSettings,
    pool: store.Pool,
    producer: AIOKafkaProducer,
    model: ScoreModel,
    clock: Clock,
) -> None:
    """Snapshots committed but never published (crash between commit and publish):
    re-evaluate those accounts, which republishes at their current revision."""
    now = clock.now()

    async def work(pg: store.Pg) -> list[Snapshot]:
        ids = await store.unpublished_accounts(pg, now - timedelta(seconds=5), 500)
        done = await evaluate_accounts(
            pg, ids, model=model, as_of=now.astimezone(UTC).date(), now=now, trigger="sweep"
        )
        return done.snapshots

    snapshots = await in_transaction(pool, work)
    await publish(pool, producer, settings.topics.health, snapshots)


async def run_sweeper(
    settings: ScoringSettings,
    pool: store.Pool,
    producer: AIOKafkaProducer,
    model: ScoreModel,
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """Sweep every ``sweep_poll_seconds`` until ``stop`` is set."""
    while not stop.is_set():
        try:
            n = await sweep_once(settings, pool, producer, model, clock)
            if n:
                log.info("swept accounts", extra={"accounts": n})
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("sweep failed; retrying", extra={"error": str(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.sweep_poll_seconds)
