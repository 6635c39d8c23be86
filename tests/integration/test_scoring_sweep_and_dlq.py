"""Time alone changes KPIs (the sweep), snapshots reach the health topic with
increasing revisions, and poison messages go to the DLQ without stalling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import orjson
import pytest

from services.scoring.consumer import new_producer
from services.scoring.sweep import sweep_once
from shared.health import HealthSnapshot
from shared.kafka import REASON_HEADER
from tests.integration.scoring_support import Stack, read_topic, running_stack

NOW = datetime(2026, 5, 10, 9, 0, tzinfo=UTC)
D = NOW.date()


@pytest.fixture(scope="module")
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(env, NOW) as s:
        yield s


async def test_poison_messages_go_to_the_dlq_and_the_consumer_keeps_going(stack: Stack) -> None:
    missing_received = {
        "id": "no-received-at",
        "type": "login",
        "account_id": "poisoned",
        "user_id": "u1",
        "timestamp": NOW.isoformat(),
    }
    # valid JSON and schema, but dated 500 days after ingest received it (written to
    # the topic past ingest): it once made every evaluation of its round fail
    years_ahead = missing_received | {
        "id": "years-ahead",
        "account_id": "from-the-future",
        "timestamp": (NOW + timedelta(days=500)).isoformat(),
        "received_at": NOW.isoformat(),
    }
    raw = [b"{not json", orjson.dumps(missing_received), orjson.dumps(years_ahead)]
    await stack.send([], raw=raw)
    await stack.send([stack.event("login", "after-poison", D, user_id="u1")])
    await stack.wait_consumed()
    h = await stack.health("after-poison")
    assert h["kpis"]["dau"] == 1
    dead = await read_topic(stack, stack.settings.topics.dlq, 3)
    reasons = sorted(dict(m.headers)[REASON_HEADER].decode() for m in dead)  # type: ignore[attr-defined]
    assert len(reasons) == 3
    assert any("not JSON" in r for r in reasons)
    assert any("received_at" in r for r in reasons)
    assert any("more than 5 minutes in the future" in r for r in reasons)
    assert not await stack.pool.fetchval(
        "SELECT count(*) FROM scoring_accounts WHERE account_id = 'from-the-future'"
    )
    for m in dead:
        headers = dict(m.headers)  # type: ignore[attr-defined]
        assert headers["x-healthscore-topic"].decode() == stack.settings.topics.product
    assert (
        await stack.pool.fetchval(
            "SELECT count(*) FROM scoring_accounts WHERE account_id = 'poisoned'"
        )
        == 0
    )


async def test_silence_changes_kpis_and_score_through_the_sweep_alone(stack: Stack) -> None:
    e = stack.event
    await stack.send(
        [
            e(
                "account_updated",
                "quiet",
                D - timedelta(days=40),
                seats_purchased=4,
                lifecycle_stage="active",
            ),
            e("login", "quiet", D, user_id="u1"),
            e("login", "quiet", D, user_id="u2"),
            e("login", "quiet", D - timedelta(days=1), user_id="u3"),
            e("contact_updated", "quiet", D - timedelta(days=3), contact_id="c1", role="champion"),
            e(
                "communication",
                "quiet",
                D - timedelta(days=2),
                channel="email",
                direction="inbound",
                contact_id="c1",
            ),
        ]
    )
    await stack.wait_consumed()
    before = await stack.health("quiet")
    assert before["kpis"]["dau"] == 2
    assert before["kpis"]["days_since_last_activity"] == 0
    assert before["kpis"]["champion_silence_days"] == 2

    # Nothing is stale yet: a sweep now evaluates nothing.
    producer = new_producer(stack.settings)
    await producer.start()
    try:
        assert await sweep_once(stack.settings, stack.pool, producer, stack.model, stack.clock) == 0
        stack.clock.advance(timedelta(days=10))
        swept = await sweep_once(stack.settings, stack.pool, producer, stack.model, stack.clock)
    finally:
        await producer.stop()
    assert swept >= 1
    after = await stack.health("quiet")
    assert after["as_of"] == date(2026, 5, 20)
    assert after["trigger"] == "sweep"
    assert after["kpis"]["dau"] == 0
    assert after["kpis"]["wau"] == 0
    assert after["kpis"]["mau"] == 3
    assert after["kpis"]["days_since_last_activity"] == 10
    assert after["kpis"]["champion_silence_days"] == 12
    assert after["score"] < before["score"]
    assert after["revision"] == before["revision"] + 1
    # the windows were only read: the sweep applied nothing
    assert (
        await stack.pool.fetchval(
            "SELECT sum(product_events) FROM scoring_account_days WHERE account_id = 'quiet'"
        )
        == 3
    )

    snaps = [
        HealthSnapshot.decode(m.value)  # type: ignore[attr-defined]
        for m in await read_topic(stack, stack.settings.topics.health, 100)
    ]
    quiet = [s for s in snaps if s.account_id == "quiet"]
    assert [s.revision for s in quiet] == list(range(1, len(quiet) + 1))
    assert quiet[-1].trigger == "sweep" and quiet[-1].kpis["days_since_last_activity"] == 10
    assert quiet[0].source_received_at is not None
    assert await stack.pool.fetchval(
        "SELECT p.revision = s.revision FROM scoring_scores s"
        " JOIN scoring_published p USING (account_id) WHERE account_id = 'quiet'"
    )

    # a week later: score_delta_7d compares with the history row of 7 days before
    stack.clock.advance(timedelta(days=7))
    assert await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock) >= 1
    week_later = await stack.health("quiet")
    assert week_later["score_delta_7d"] == pytest.approx(
        week_later["score"] - after["score"], abs=0.01
    )
    assert after["score_delta_7d"] is None  # no history row 7 days before D+10
    # that evaluation was committed but never published (no producer: as if the
    # broker failed); the next sweep republishes it at the same revision
    assert await stack.pool.fetchval(
        "SELECT p.revision < s.revision FROM scoring_scores s"
        " JOIN scoring_published p USING (account_id) WHERE account_id = 'quiet'"
    )
    stack.clock.advance(timedelta(seconds=10))
    producer = new_producer(stack.settings)
    await producer.start()
    try:
        assert await sweep_once(stack.settings, stack.pool, producer, stack.model, stack.clock) == 0
    finally:
        await producer.stop()
    assert await stack.pool.fetchval(
        "SELECT p.revision = s.revision FROM scoring_scores s"
        " JOIN scoring_published p USING (account_id) WHERE account_id = 'quiet'"
    )
    snaps = [
        HealthSnapshot.decode(m.value)  # type: ignore[attr-defined]
        for m in await read_topic(stack, stack.settings.topics.health, 100)
    ]
    last = [x for x in snaps if x.account_id == "quiet"][-1]
    assert last.revision == week_later["revision"]
    assert last.score_delta_7d == week_later["score_delta_7d"]


async def test_pruning_forgets_old_ids_and_buckets_only(stack: Stack) -> None:
    from services.scoring import store

    now = stack.clock.now()
    async with stack.pool.acquire() as pg:
        await pg.execute(
            "INSERT INTO scoring_processed_events VALUES ('old-id', $1), ('new-id', $2)",
            now - timedelta(days=8),
            now - timedelta(days=6),
        )
        await pg.execute(
            "INSERT INTO scoring_account_days (account_id, day, product_events) VALUES"
            " ('pruned', $1, 1), ('pruned', $2, 1)",
            now.date() - timedelta(days=401),
            now.date() - timedelta(days=399),
        )
        await pg.execute(
            "INSERT INTO scoring_account_users (account_id, user_id, last_day, days) VALUES"
            " ('pruned', 'gone', $1, B'1'::varbit::bit(448)),"
            " ('pruned', 'kept', $2, B'1'::varbit::bit(448))",
            now.date() - timedelta(days=401),
            now.date() - timedelta(days=399),
        )
        await store.prune_processed(pg, now)
        ids = await pg.fetch(
            "SELECT event_id FROM scoring_processed_events WHERE event_id LIKE '%-id'"
        )
        days = await pg.fetch("SELECT day FROM scoring_account_days WHERE account_id = 'pruned'")
        users = await pg.fetch(
            "SELECT user_id FROM scoring_account_users WHERE account_id = 'pruned'"
        )
    assert [r[0] for r in ids] == ["new-id"]
    assert [r[0] for r in days] == [now.date() - timedelta(days=399)]
    assert [r[0] for r in users] == ["kept"]  # a user last active 401 days ago is forgotten


async def test_two_sweepers_share_the_work_without_double_evaluation(stack: Stack) -> None:
    import asyncio

    from services.scoring import store
    from services.scoring.clock import FixedClock

    await stack.send([stack.event("login", f"many-{i}", D, user_id="u") for i in range(40)])
    await stack.wait_consumed()
    before = dict(
        await stack.pool.fetch("SELECT account_id, revision FROM scoring_scores")  # type: ignore[arg-type]
    )
    later = FixedClock(stack.clock.now() + timedelta(days=1))
    other = await store.create_pool(stack.settings.database_url)
    small = stack.settings.model_copy(update={"sweep_batch": 5})
    try:
        a, b = await asyncio.gather(
            sweep_once(small, stack.pool, None, stack.model, later),
            sweep_once(small, other, None, stack.model, later),
        )
    finally:
        await other.close()
    after = dict(
        await stack.pool.fetch("SELECT account_id, revision FROM scoring_scores")  # type: ignore[arg-type]
    )
    assert a + b == len(before)  # every account exactly once across both sweepers
    assert all(after[k] == before[k] + 1 for k in before)


async def test_each_day_keeps_its_last_evaluation_in_the_history(stack: Stack) -> None:
    from services.scoring import read_model

    now = stack.clock.now()
    day = now.date()
    for user in ("u1", "u2"):  # two evaluations that day: dau 1, then 2
        await stack.send(
            [stack.event("login", "daily", day, user_id=user, timestamp=now.isoformat())]
        )
        await stack.wait_consumed()
    assert (await stack.health("daily"))["kpis"]["dau"] == 2
    stack.clock.advance(timedelta(days=1))
    assert await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock) >= 1
    got = await read_model.history(stack.pool, "daily", day + timedelta(days=1), 7)
    assert [(h["day"], h["kpis"]["dau"], h["kpis"]["wau"]) for h in got["history"]] == [
        (day.isoformat(), 2, 2),
        ((day + timedelta(days=1)).isoformat(), 0, 2),
    ]
    # the earlier day's row moved to the history table; today's is the current row
    rows = await stack.pool.fetch("SELECT day FROM scoring_history WHERE account_id = 'daily'")
    assert [r["day"] for r in rows] == [day]


async def test_a_new_utc_day_makes_yesterdays_scores_stale_at_once(stack: Stack) -> None:
    """Re-evaluated at least once per UTC day: an account last evaluated seconds
    before midnight is swept seconds after it (long before sweep_interval)."""
    now = stack.clock.now()
    before_midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    stack.clock.advance(before_midnight - timedelta(seconds=10) - now)
    await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock)  # catch up
    late = stack.clock.now()
    await stack.send(
        [stack.event("login", "night-owl", late.date(), user_id="u1", timestamp=late.isoformat())]
    )
    await stack.wait_consumed()
    assert (await stack.health("night-owl"))["as_of"] == late.date()
    # nothing is stale just before midnight: everything was just swept or scored
    assert await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock) == 0
    stack.clock.advance(timedelta(seconds=20))  # 00:00:10, the next day
    swept = await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock)
    assert swept >= 1
    after = await stack.health("night-owl")
    assert after["as_of"] == late.date() + timedelta(days=1) and after["trigger"] == "sweep"
    # and once swept today, it waits for the interval again
    stack.clock.advance(timedelta(seconds=30))
    assert await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock) == 0
