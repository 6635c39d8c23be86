"""Crash matrix: ingest, scoring and alerts run as separate processes on the real
broker and PostgreSQL; a client posts a seeded stream over HTTP while each service
is killed with SIGKILL three times (in turn) and restarted. Then:

- every event that got a 202 is counted, and exactly once: the KPIs of every
  account (read through the scoring API) equal the oracle computed here from the
  accepted events — including requests that failed because ingest died under them
  and were resent with the same ids, and deliberate client resends;
- every expected alert reached each of two subscriptions once: one distinct
  ``webhook-id`` per (alert, subscription), for exactly the accounts whose NPS
  answers make the shipped ``negative-nps`` rule fire, and no other alert.

The figures go to test-artifacts/reliability-figures.json (README "Guarantees").
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import date
from typing import Any

import asyncpg
import httpx
import pytest

from tests.infra import ServiceProcess
from tests.reliability.pipeline import (
    ALERT_RULE,
    AUTH,
    Client,
    Event,
    WebhookTally,
    oracle,
    pipeline_env,
    plan,
    record_figures,
    subscribe,
    until,
    wait_for_oracle,
    wait_for_webhooks,
)
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(300)

ACCOUNTS = [f"crash-{i:02d}" for i in range(10)]
DETRACTORS = set(ACCOUNTS[:4])
KILLS = ["ingest", "scoring", "alerts"] * 3
BATCH = 40
STEP = 4  # batches sent between two kills
SUBSCRIPTIONS = ("a", "b")


def with_resends(events: list[Event], seed: int) -> list[list[Event]]:
    """Batches of the stream; every sixth batch is a client resend of earlier
    events (same ids, same content), which must count once."""
    rnd = random.Random(seed)
    batches: list[list[Event]] = []
    for i in range(0, len(events), BATCH):
        batches.append(events[i : i + BATCH])
        if len(batches) % 6 == 5:
            batches.append(rnd.sample(events[: i + BATCH], 10))
    return batches


async def count_ledger(database_url: str, ids: list[str]) -> int:
    """Accepted events in scoring's processed-event ledger (one row per id)."""
    conn = await asyncpg.connect(database_url)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM scoring_processed_events WHERE event_id = ANY($1)", ids
        )
    finally:
        await conn.close()
    return int(n)


async def count_sensitive(scoring_url: str, events: list[Event]) -> tuple[int, int]:
    """(expected, counted) of the KPIs that count events rather than distinct users:
    touchpoints, and sessions (60 s each, so minutes in product × mau = sessions)."""
    expected = counted = 0
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
        for acct in ACCOUNTS:
            body = (await http.get(f"{scoring_url}/v1/accounts/{acct}/health")).json()
            want = oracle(events, acct, date.fromisoformat(body["as_of"]))
            k = body["kpis"]
            expected += want["touchpoints_30d"] + round(
                (want["time_in_product_minutes"] or 0) * want["mau"]
            )
            counted += k["touchpoints_30d"] + round(
                (k["time_in_product_minutes"] or 0) * (k["mau"] or 0)
            )
    return expected, counted


async def test_kill_9_of_every_service_while_events_flow_loses_and_doubles_nothing(
    env: dict[str, str], database_url: str, receiver: Receiver
) -> None:
    penv = pipeline_env(env)
    procs = {n: ServiceProcess(n, penv) for n in ("ingest", "scoring", "alerts")}
    for p in procs.values():
        await asyncio.to_thread(p.start)
    try:
        for name in SUBSCRIPTIONS:
            await subscribe(procs["alerts"].url, f"{receiver.url}/{name}")
        events = plan(ACCOUNTS, DETRACTORS, per_account=150, seed=6, prefix="cm")
        batches = with_resends(events, seed=6)
        client = Client(lambda: procs["ingest"].url)
        kills_started = 0
        deadline = time.monotonic() + 180

        async def send_all() -> None:
            async with httpx.AsyncClient(timeout=15) as http:
                for b, batch in enumerate(batches):
                    # never more than a step ahead of the kills: they happen mid-stream
                    await until(lambda b=b: kills_started >= min(len(KILLS), b // STEP), 120)
                    await client.post(http, batch, deadline)

        async def kill_all() -> None:
            nonlocal kills_started
            for k, name in enumerate(KILLS):
                await until(lambda k=k: client.batches_done >= k * STEP + STEP // 2, 120)
                procs[name].kill()  # SIGKILL: no clean-up of any kind
                kills_started += 1
                await asyncio.sleep(0.3)
                await asyncio.to_thread(procs[name].start)

        await asyncio.gather(send_all(), kill_all())

        accepted = list(client.accepted.values())
        assert set(client.accepted) == {str(e["id"]) for e in events}  # all got a 202 in the end
        diff = await wait_for_oracle(lambda: procs["scoring"].url, accepted, ACCOUNTS, 120)
        assert diff == {}, diff
        tally = await wait_for_webhooks(receiver, len(SUBSCRIPTIONS) * len(DETRACTORS), 60)
        await asyncio.sleep(1.0)  # nothing arrives late to double count
        assert await wait_for_oracle(lambda: procs["scoring"].url, accepted, ACCOUNTS, 0) == {}
        counted = await count_ledger(database_url, list(client.accepted))
        expected_counts, got_counts = await count_sensitive(procs["scoring"].url, accepted)
        async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
            r = await http.get(f"{procs['alerts'].url}/v1/alerts", params={"rule_id": ALERT_RULE})
        fired: list[dict[str, Any]] = r.json()["alerts"]
        tally = WebhookTally.of(receiver)
        record_figures(
            "crash_matrix",
            {
                "kills": {n: KILLS.count(n) for n in procs},
                "events_sent": len(client.accepted),
                "events_counted": counted,
                "events_lost": len(client.accepted) - counted,
                "count_sensitive_expected": expected_counts,
                "count_sensitive_counted": got_counts,
                "events_double_counted": max(0, got_counts - expected_counts),
                "accounts_matching_oracle": len(ACCOUNTS) - len(diff),
                "accounts": len(ACCOUNTS),
                "answers": dict(client.statuses),
                "events_resent_after_failed_request": client.resent_events,
                "events_resent_by_client_on_purpose": sum(len(b) for b in batches) - len(events),
                "alerts_expected": len(SUBSCRIPTIONS) * len(DETRACTORS),
                "alerts_delivered": tally.delivered(),
                "alerts_duplicated": sum(
                    n - 1 for per in tally.alerts.values() for n in per.values() if n > 1
                ),
                "webhook_requests": tally.requests,
                "webhook_redeliveries_same_id": tally.requests - tally.delivered(),
            },
        )
        assert counted == len(client.accepted)
        assert got_counts == expected_counts
        assert sorted(a["account_id"] for a in fired) == sorted(DETRACTORS)  # one alert each
        for name in SUBSCRIPTIONS:
            path = f"/{name}"
            assert tally.accounts[path] == DETRACTORS
            assert set(tally.alerts[path]) == {a["id"] for a in fired}
            assert set(tally.alerts[path].values()) == {1}, tally.alerts[path]
    finally:
        for p in procs.values():
            p.stop()
