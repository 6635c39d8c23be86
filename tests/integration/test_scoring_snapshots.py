"""A new snapshot is published whenever what it says changes — not only the score,
band or KPIs: the alerts service acts on the 7-day delta ("score dropped 15
points in 7 days"), on the lifecycle stage (rules by stage) and shows the name.
The last snapshot on the topic must always agree with the stored score."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.scoring.consumer import new_producer
from services.scoring.sweep import sweep_once
from shared.health import HealthSnapshot
from tests.integration.scoring_support import Stack, read_topic, running_stack

NOW = datetime(2026, 5, 10, 9, 0, tzinfo=UTC)
D = NOW.date()


@pytest.fixture(scope="module")
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(env, NOW) as s:
        yield s


async def _snapshots(stack: Stack, account: str) -> list[HealthSnapshot]:
    """Every snapshot of ``account`` on the health topic, by revision."""
    got = await read_topic(stack, stack.settings.topics.health)
    mine = [s for s in (HealthSnapshot.decode(m.value) for m in got) if s.account_id == account]
    return sorted(mine, key=lambda s: s.revision)


async def _stored(stack: Stack, account: str) -> Any:
    return await stack.pool.fetchrow(
        "SELECT revision, score, score_delta_7d FROM scoring_scores WHERE account_id = $1",
        account,
    )


async def test_a_renamed_account_that_changes_stage_gets_a_snapshot(stack: Stack) -> None:
    e = stack.event
    early = (NOW - timedelta(hours=2)).isoformat()
    await stack.send(
        [
            e("account_updated", "st", D, lifecycle_stage="active", name="Old", timestamp=early),
            e("login", "st", D, user_id="u1"),
        ]
    )
    await stack.wait_consumed()
    before = await _stored(stack, "st")
    later = (NOW - timedelta(hours=1)).isoformat()
    await stack.send(
        [e("account_updated", "st", D, lifecycle_stage="churned", name="New", timestamp=later)]
    )
    await stack.wait_consumed()
    after = await _stored(stack, "st")
    assert after["score"] == before["score"]  # nothing of the score moved
    assert after["revision"] == before["revision"] + 1
    last = (await _snapshots(stack, "st"))[-1]
    assert (last.revision, last.lifecycle_stage, last.account_name) == (
        after["revision"],
        "churned",
        "New",
    )


async def test_a_7_day_delta_that_moves_on_its_own_is_published(stack: Stack) -> None:
    """An NPS answer of 10, then one of 0 the next day: the score drops on day 1;
    on day 8 the delta's reference becomes day 1's score, so the delta changes while
    the score does not. Each day's last snapshot says the stored delta."""
    e = stack.event
    await stack.send(
        [
            e("account_updated", "nps", D, seats_purchased=10, lifecycle_stage="active"),
            e("survey_response", "nps", D, survey="nps", score=10, contact_id="c1"),
        ]
    )
    await stack.wait_consumed()
    producer = new_producer(stack.settings)
    await producer.start()
    deltas = set()
    try:
        for day in range(1, 10):
            stack.clock.advance(timedelta(days=1))
            await sweep_once(stack.settings, stack.pool, producer, stack.model, stack.clock)
            if day == 1:
                today = stack.clock.now().date()
                await stack.send(
                    [e("survey_response", "nps", today, survey="nps", score=0, contact_id="c2")]
                )
                await stack.wait_consumed()
            stored = await _stored(stack, "nps")
            deltas.add(stored["score_delta_7d"])
            last = (await _snapshots(stack, "nps"))[-1]
            assert (last.revision, last.score, last.score_delta_7d) == tuple(stored), day
    finally:
        await producer.stop()
    assert len(deltas - {None}) >= 2  # the delta did move on its own at least once
