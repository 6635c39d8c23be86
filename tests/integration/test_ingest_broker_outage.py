"""Broker down → 503 with Retry-After and never a 202; broker back → accepted.

Runs its own tansu broker (not the session one) so it can stop and restart it on
the same port; tansu keeps nothing across a restart, so topics are re-created."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from shared.embedded import TansuBroker
from shared.kafka import ensure_topics
from tests.ingest_helpers import AUTH, ingest_client, read_topic, settings_from

pytestmark = pytest.mark.asyncio(loop_scope="session")


def body(event_id: str) -> bytes:
    event = {"id": event_id, "type": "login", "account_id": "outage", "user_id": "u"}
    return orjson.dumps({"events": [event]})


HEADERS = {**AUTH, "Content-Type": "application/json"}


async def test_broker_outage_is_503_and_recovery_accepts(
    private_broker: TansuBroker, env: dict[str, str]
) -> None:
    broker = private_broker
    settings = settings_from(
        env,
        KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap,
        HEALTHSCORE_PUBLISH_TIMEOUT_SECONDS="2",
        HEALTHSCORE_RETRY_AFTER_SECONDS="7",
    )
    async with ingest_client(settings) as (_app, client):
        r = await client.post("/v1/events", content=body("before"), headers=HEADERS)
        assert r.status_code == 202, r.text

        broker.stop()
        for attempt in range(3):
            r = await client.post("/v1/events", content=body(f"during-{attempt}"), headers=HEADERS)
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "7"
            assert r.json()["detail"].startswith("the broker did not acknowledge the events")
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] is False

        broker.start()  # same port; empty
        await ensure_topics(settings)
        statuses = []
        for attempt in range(30):
            r = await client.post("/v1/events", content=body(f"after-{attempt}"), headers=HEADERS)
            statuses.append(r.status_code)
            if r.status_code == 202:
                break
            await asyncio.sleep(0.5)
        assert statuses[-1] == 202, statuses
        assert set(statuses) <= {202, 503}, statuses
        accepted_id = f"after-{len(statuses) - 1}"
        published = await read_topic(broker.bootstrap, settings.topics.product, at_least=1)
        assert accepted_id in {m["id"] for m in published}
