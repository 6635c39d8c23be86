"""`healthscore rescore --days N` rewrites the daily history with the current model
from the stored windows; today's score follows on the next sweep."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from services.scoring.evaluation import evaluate_accounts
from services.scoring.score_model import DEFAULT_MODEL_PATH, ScoreModel, load_model
from services.scoring.sweep import sweep_once
from tests.infra import ROOT
from tests.integration.scoring_support import Stack, running_stack

NOW = datetime(2026, 7, 20, 10, 0, tzinfo=UTC)
D = NOW.date()


@pytest.fixture(scope="module")
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(env, NOW) as s:
        e = s.event
        await s.send(
            [
                e("login", "r1", D - timedelta(days=12), user_id="u1"),
                e("login", "r1", D - timedelta(days=6), user_id="u2"),
                e("login", "r1", D - timedelta(days=2), user_id="u1"),
            ]
        )
        await s.wait_consumed()
        yield s


async def test_rescore_rewrites_past_days_with_the_new_model(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    new_model = tmp_path / "model.yaml"
    new_model.write_text(
        DEFAULT_MODEL_PATH.read_text().replace(
            'version: "default-2026.11-1"', 'version: "custom-2"'
        )
    )
    assert load_model(new_model).version == "custom-2"
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "rescore", "--days", "5"],
        env=os.environ
        | env
        | {"HEALTHSCORE_NOW": NOW.isoformat(), "HEALTHSCORE_SCORE_MODEL": str(new_model)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rescored 4 account-days with model custom-2" in proc.stdout
    rows = await stack.pool.fetch(
        "SELECT day, model_version, kpis FROM scoring_days WHERE account_id = 'r1' ORDER BY day"
    )
    by_day = {r["day"]: r for r in rows}
    assert sorted(by_day) == [D - timedelta(days=i) for i in range(4, -1, -1)]
    for i in range(1, 5):
        row = by_day[D - timedelta(days=i)]
        assert row["model_version"] == "custom-2"
        # as of D−i: last activity D−2 (if already happened) else D−6
        expected_idle = 2 - i if i <= 2 else 6 - i
        assert row["kpis"]["days_since_last_activity"] == expected_idle, i
        assert row["kpis"]["wau"] == (2 if i <= 2 else 1)
    assert by_day[D]["model_version"] == stack.model.version  # today: left to the sweep

    # The running service (here: its sweep, with the model it was started with) picks
    # every account up again at once.
    swept = await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock)
    assert swept == 1


async def test_rescore_refuses_an_invalid_model(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: x\nmeasures: [{kpi: happiness, red: 0, green: 1}]\n")
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "rescore", "--days", "3"],
        env=os.environ | env | {"HEALTHSCORE_SCORE_MODEL": str(bad)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown kpi 'happiness'" in proc.stderr


async def test_a_rescored_day_outlives_the_older_current_row_of_that_day(
    stack: Stack, tmp_path: Path
) -> None:
    """An account whose current score is still of day X (not evaluated since) when
    X is rescored: the rescored row is X's history, also once the next day's
    evaluation moves the older current row to the history."""
    pool, model = stack.pool, stack.model
    x = D + timedelta(days=30)
    await pool.execute(
        "INSERT INTO scoring_accounts (account_id, first_event_day, last_event_day)"
        " VALUES ('r2', $1, $1)",
        x,
    )
    new_model = tmp_path / "model.yaml"
    new_model.write_text(
        DEFAULT_MODEL_PATH.read_text().replace(
            'version: "default-2026.11-1"', 'version: "custom-3"'
        )
    )

    async def evaluate(as_of: date, hours: int, m: ScoreModel, current: bool) -> set[str]:
        async with pool.acquire() as pg, pg.transaction():
            done = await evaluate_accounts(
                pg,
                ["r2"],
                model=m,
                as_of=as_of,
                now=datetime.combine(x, time(0), tzinfo=UTC) + timedelta(hours=hours),
                trigger="sweep" if current else "rescore",
                current=current,
            )
        return done.written

    async def days() -> list[tuple[date, str]]:
        rows = await pool.fetch(
            "SELECT day, model_version FROM scoring_days WHERE account_id = 'r2' ORDER BY day"
        )
        return [(r["day"], r["model_version"]) for r in rows]

    await evaluate(x, 1, model, current=True)
    assert await days() == [(x, model.version)]
    await evaluate(x, 2, load_model(new_model), current=False)  # the rescore, later
    assert await days() == [(x, "custom-3")]
    await evaluate(x + timedelta(days=1), 25, model, current=True)
    assert await days() == [(x, "custom-3"), (x + timedelta(days=1), model.version)]
    # an evaluation as of the earlier day committing late (it started before
    # midnight) replaces nothing: the current row is the later day's history too
    assert await evaluate(x, 26, load_model(new_model), current=True) == set()
    assert await days() == [(x, "custom-3"), (x + timedelta(days=1), model.version)]
