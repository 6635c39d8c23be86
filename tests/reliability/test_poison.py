"""Poison input on every consumer (SPEC §8): corrupt and schema-violating messages
written straight to the event topics (scoring) and the health topic (alerts) go to
``<prefix>.dlq`` with the reason and their origin in headers; each consumer keeps
going (a good message after the poison is applied and alerts), neither process
restarts, and the consumers catch up (scoring's lag gauge back to 0, alerts'
stored offsets at the end of the health topic)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from shared.kafka import REASON_HEADER
from tests.e2e.test_alerts_webhooks_e2e import snapshot, wait_until
from tests.infra import ServiceProcess
from tests.ingest_helpers import read_records
from tests.reliability.pipeline import AUTH, subscribe, wait_for_webhooks
from tests.reliability.test_crash_matrix import pipeline_env
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(180)

NOW = datetime.now(UTC)


def wire(**fields: object) -> bytes:
    """An event as ingest writes it (with ``received_at``), then altered."""
    base = {
        "id": "poison-" + str(fields.get("id", "x")),
        "type": "login",
        "account_id": "poisoned",
        "user_id": "u1",
        "timestamp": NOW.isoformat(),
        "received_at": NOW.isoformat(),
    }
    return orjson.dumps({k: v for k, v in (base | fields).items() if v is not None})


EVENT_POISON: dict[str, bytes | None] = {
    "not JSON": b"{not json",
    "empty": b"",
    "tombstone (no value)": None,
    "a JSON list": b"[1, 2]",
    "unknown type": wire(id=1, type="teleport"),
    "no received_at": orjson.dumps(
        {"id": "p2", "type": "login", "account_id": "p", "user_id": "u"}
    ),
    "wrong field type": wire(id=3, type="session", duration_seconds="long"),
    "NUL in a string": wire(id=4, user_id="a\u0000b"),
    "account id too long": wire(id=5, account_id="a" * 500),
    "timestamp a year ahead": wire(id=6, timestamp=(NOW + timedelta(days=365)).isoformat()),
    "timestamp older than 400 days": wire(id=7, timestamp=(NOW - timedelta(days=500)).isoformat()),
}
HEALTH_POISON: dict[str, bytes | None] = {
    "not JSON": b"not json",
    "tombstone (no value)": None,
    "empty object": b"{}",
    "wrong types": orjson.dumps({"account_id": 5, "revision": "x"}),
}


async def test_poison_goes_to_the_dlq_and_every_consumer_keeps_going(
    env: dict[str, str], database_url: str, receiver: Receiver
) -> None:
    penv = pipeline_env(env)
    prefix = penv["HEALTHSCORE_TOPIC_PREFIX"]
    product, communication = f"{prefix}.events.product", f"{prefix}.events.communication"
    health, dlq = f"{prefix}.health", f"{prefix}.dlq"
    scoring, alerts = ServiceProcess("scoring", penv), ServiceProcess("alerts", penv)
    for p in (scoring, alerts):
        await asyncio.to_thread(p.start)
    producer = AIOKafkaProducer(bootstrap_servers=penv["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await producer.start()
    try:
        await subscribe(alerts.url, f"{receiver.url}/a")
        for n, value in enumerate(EVENT_POISON.values()):
            await producer.send_and_wait(product if n % 2 else communication, value, key=b"p")
        for value in HEALTH_POISON.values():
            await producer.send_and_wait(health, value, key=b"p")
        # then good messages: an NPS detractor answer (scored, makes the alert fire)
        # and a snapshot straight to the health topic (alerts applies it)
        good = wire(id="ok", type="survey_response", survey="nps", score=0, contact_id="c1")
        good = good.replace(b'"poisoned"', b'"after-poison"').replace(b'"user_id":"u1",', b"")
        await producer.send_and_wait(communication, good, key=b"after-poison")
        await producer.send_and_wait(
            health, snapshot("direct-after-poison", 1, nps=-50).encode(), key=b"d"
        )

        tally = await wait_for_webhooks(receiver, 2, 60)
        assert tally.accounts["/a"] == {"after-poison", "direct-after-poison"}

        dead = await read_records(
            penv["KAFKA_BOOTSTRAP_SERVERS"], dlq, at_least=len(EVENT_POISON) + len(HEALTH_POISON)
        )
        origins = sorted(dict(m.headers)["x-healthscore-topic"].decode() for m in dead)
        assert origins.count(health) == len(HEALTH_POISON)
        assert origins.count(product) + origins.count(communication) == len(EVENT_POISON)
        assert all(dict(m.headers)[REASON_HEADER] for m in dead)  # every one says why
        assert sorted((m.value or b"") for m in dead) == sorted(
            (v or b"") for v in [*EVENT_POISON.values(), *HEALTH_POISON.values()]
        )

        async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
            r = await http.get(f"{scoring.url}/v1/accounts/poisoned/health")
            assert r.status_code == 404  # nothing of the poison was applied

            async def scoring_caught_up() -> bool:
                text = (await http.get(f"{scoring.url}/metrics")).text
                lags = [
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith("healthscore_scoring_consumer_lag_events{")
                ]
                return bool(lags) and not any(lags)

            await wait_until(scoring_caught_up, timeout=30)
            metrics = (await http.get(f"{alerts.url}/metrics")).text
        assert f"healthscore_alerts_dead_lettered_total {float(len(HEALTH_POISON))}" in metrics
        on_topic = len(await read_records(penv["KAFKA_BOOTSTRAP_SERVERS"], health))
        conn = await asyncpg.connect(database_url)
        try:
            stored = await conn.fetchval(
                "SELECT sum(next_offset) FROM alerts_consumer_offsets WHERE topic = $1", health
            )
        finally:
            await conn.close()
        assert stored == on_topic  # alerts' lag is 0: it committed past every message
        for p in (scoring, alerts):
            assert p.proc is not None and p.proc.poll() is None
            assert "worker died" not in p.log_text()
    finally:
        await producer.stop()
        scoring.stop()
        alerts.stop()
