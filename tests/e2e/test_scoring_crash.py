"""Crash test: kill -9 the scoring process repeatedly while a stream flows, restart
it; the final KPIs equal the no-crash result (nothing lost, nothing double counted)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from services.scoring.settings import ScoringSettings
from shared.kafka import ensure_topics, make_producer
from tests.infra import BOOTSTRAP_KEY, ServiceProcess

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ACCOUNTS = [f"acct-{i}" for i in range(12)]


def stream(n: int, seed: int = 7) -> Iterator[dict[str, object]]:
    rnd = random.Random(seed)
    sent: list[dict[str, object]] = []
    for i in range(n):
        if sent and rnd.random() < 0.05:  # a client resend of an earlier event
            yield rnd.choice(sent)
            continue
        acct = rnd.choice(ACCOUNTS)
        ts = (NOW - timedelta(days=rnd.randrange(0, 25), minutes=rnd.randrange(600))).isoformat()
        base = {
            "id": f"e{i}",
            "account_id": acct,
            "timestamp": ts,
            "received_at": datetime.now(UTC).isoformat(),
        }
        kind = rnd.random()
        if kind < 0.5:
            ev = base | {
                "type": "session",
                "user_id": f"u{rnd.randrange(8)}",
                "duration_seconds": rnd.randrange(1, 500),
            }
        elif kind < 0.8:
            ev = base | {
                "type": "communication",
                "channel": "email",
                "direction": rnd.choice(["inbound", "outbound"]),
                "contact_id": f"c{rnd.randrange(4)}",
            }
        else:
            ev = base | {"type": "login", "user_id": f"u{rnd.randrange(8)}"}
        sent.append(ev)
        yield ev


def expected(events: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    seen: set[object] = set()
    users: dict[str, set[object]] = defaultdict(set)
    seconds: dict[str, float] = defaultdict(float)
    touches: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev["id"] in seen:
            continue
        seen.add(ev["id"])
        a = str(ev["account_id"])
        if ev["type"] == "communication":
            touches[a] += 1
        else:
            users[a].add(ev["user_id"])
            if ev["type"] == "session":
                seconds[a] += float(ev["duration_seconds"])  # type: ignore[arg-type]
    return {
        a: {
            "mau": len(users[a]),
            "touchpoints_30d": touches[a],
            "time_in_product_minutes": (
                round(seconds[a] / 60 / len(users[a]), 6) if users[a] else None
            ),
        }
        for a in ACCOUNTS
    }


@pytest.mark.slow
async def test_kill_minus_9_while_streaming_loses_and_doubles_nothing(
    env: dict[str, str],
) -> None:
    env = env | {"HEALTHSCORE_NOW": NOW.isoformat(), "HEALTHSCORE_BATCH_MAX_EVENTS": "200"}
    import os
    from unittest import mock

    with mock.patch.dict(os.environ, env):
        settings = ScoringSettings()
    await ensure_topics(settings)
    events = list(stream(6000))
    svc = ServiceProcess("scoring", env)
    await asyncio.to_thread(svc.start)
    producer = make_producer(settings)
    await producer.start()
    try:
        chunks = [events[i : i + 500] for i in range(0, len(events), 500)]
        for n, chunk in enumerate(chunks):
            for ev in chunk:
                await producer.send(
                    settings.topics.product
                    if ev["type"] != "communication"
                    else settings.topics.communication,
                    orjson.dumps(ev),
                    key=str(ev["account_id"]).encode(),
                )
            await producer.flush()
            if n % 3 == 1:  # kill -9 mid-stream, then restart
                await asyncio.sleep(0.3)
                svc.kill()
                await asyncio.to_thread(svc.start)
    finally:
        await producer.stop()

    want = expected(events)
    async with httpx.AsyncClient(base_url=svc.url, headers=AUTH) as client:
        got: dict[str, dict[str, object]] = {}
        for _ in range(600):
            got = {}
            for a in ACCOUNTS:
                r = await client.get(f"/v1/accounts/{a}/health")
                if r.status_code == 200:
                    k = r.json()["kpis"]
                    got[a] = {key: k[key] for key in want[a]}
                    if got[a]["time_in_product_minutes"] is not None:
                        got[a]["time_in_product_minutes"] = round(
                            got[a]["time_in_product_minutes"],
                            6,  # type: ignore[call-overload]
                        )
            if got == want:  # may be reached only once the whole stream is applied
                break
            await asyncio.sleep(0.2)
        metrics = (await client.get("/metrics")).text
    svc.stop()
    assert 'healthscore_scoring_events_total{outcome="applied"' in metrics or (
        "healthscore_scoring_events_total{" in metrics and 'outcome="applied"' in metrics
    )
    assert "healthscore_scoring_consumer_lag_events{" in metrics
    assert "healthscore_scoring_event_to_score_seconds_count" in metrics
    assert 'healthscore_scoring_accounts_scored_total{trigger="events"}' in metrics
    for a in ACCOUNTS:
        assert got[a]["mau"] == want[a]["mau"], a
        assert got[a]["touchpoints_30d"] == want[a]["touchpoints_30d"], a
        assert got[a]["time_in_product_minutes"] == want[a]["time_in_product_minutes"], a
