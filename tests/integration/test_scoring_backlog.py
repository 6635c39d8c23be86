"""A consumer far behind (a backlog of many batches) evaluates an account once for
many batches, not after each one, and evaluates everything at once when it has
caught up: the final scores show every event without waiting out the interval."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from services.scoring.metrics import ACCOUNTS_SCORED
from shared.kafka import ensure_topics, make_producer
from tests.integration.scoring_support import running_stack, settings_from

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ACCOUNTS = [f"behind{i}" for i in range(5)]
EVENTS = 1_000
BATCH = 25  # 40 batches of the backlog, each touching every account


def _evaluations() -> float:
    return float(ACCOUNTS_SCORED.labels("events")._value.get())


async def test_a_backlog_is_scored_once_for_many_batches_and_at_once_when_caught_up(
    env: dict[str, str],
) -> None:
    env = env | {
        "HEALTHSCORE_BATCH_MAX_EVENTS": str(BATCH),
        # longer than the test waits: only catching up can start the rounds
        "HEALTHSCORE_BACKLOG_EVALUATE_INTERVAL": "60",
    }
    settings = settings_from(env)
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:  # the backlog, before the consumer starts
        for i in range(EVENTS):
            account = ACCOUNTS[i % len(ACCOUNTS)]
            ev = {
                "id": f"backlog-{i}",
                "type": "login",
                "account_id": account,
                "user_id": f"u{i % 40}",
                "timestamp": NOW.isoformat(),
                "received_at": datetime.now(UTC).isoformat(),
            }
            await producer.send(settings.topics.product, orjson.dumps(ev), key=account.encode())
        await producer.flush()
    finally:
        await producer.stop()

    before = _evaluations()
    async with running_stack(env, NOW) as stack:
        stack.produced = EVENTS
        await stack.wait_consumed(timeout=40)  # < the 60 s interval
        evaluations = _evaluations() - before
        rows = await stack.pool.fetch(
            "SELECT account_id, kpis FROM scoring_scores ORDER BY account_id"
        )
    # every event shows: 40 users over 5 accounts, 8 each, all active today
    assert [(r["account_id"], r["kpis"]["dau"]) for r in rows] == [(a, 8) for a in ACCOUNTS]
    # 40 batches touched every account; after each one, that would be 200 evaluations
    assert evaluations <= 2 * len(ACCOUNTS), evaluations


async def test_without_a_backlog_nothing_waits_for_the_interval(env: dict[str, str]) -> None:
    """A trickle of events (the consumer never more than a batch behind) is scored
    as it comes, however long the backlog interval: pacing only ever applies to
    a consumer that is behind."""
    env = env | {
        "HEALTHSCORE_BATCH_MAX_EVENTS": str(BATCH),
        "HEALTHSCORE_BACKLOG_EVALUATE_INTERVAL": "60",
    }
    async with running_stack(env, NOW) as stack:
        stack.produced = await stack.consumed()  # what the test before left applied
        accounts = [f"trickle{i}" for i in range(10)]
        for account in accounts:
            await stack.send([stack.event("login", account, NOW.date(), user_id="u1")])
        await stack.wait_consumed(timeout=40)  # < the 60 s interval
        scored = await stack.pool.fetchval(
            "SELECT count(*) FROM scoring_scores WHERE account_id = ANY($1)", accounts
        )
    assert scored == len(accounts)
