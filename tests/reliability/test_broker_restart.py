"""The broker stopped and started again under the whole pipeline (ingest, scoring,
alerts as processes, on a private tansu broker so the rest of the suite is not
disturbed):

- while it is down, ingest answers 503 with Retry-After, never a 202;
- once it is back, the pipeline resumes on its own: events posted after the
  restart are scored (KPIs equal the oracle over everything accepted) and their
  alerts are delivered; nothing scored before the outage is lost or doubled.

Memory-storage limit: the embedded broker (tansu) keeps topics, messages,
committed offsets and groups in memory only, so a restart empties it. Events it
had acknowledged but scoring had not consumed yet are gone with it — this test
waits for the first phase to be consumed before stopping the broker, because
that loss is the stated limit, not a bug. Real Kafka keeps them (replicated, on
disk) and resumes from the committed offsets.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared.embedded import TansuBroker
from tests.infra import ServiceProcess
from tests.reliability.pipeline import (
    AUTH,
    Client,
    plan,
    record_figures,
    subscribe,
    wait_for_oracle,
    wait_for_webhooks,
)
from tests.reliability.test_crash_matrix import pipeline_env
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(240)

BEFORE = [f"brk-a{i}" for i in range(4)]
AFTER = [f"brk-b{i}" for i in range(4)]
DETRACTORS_BEFORE = {BEFORE[0]}
DETRACTORS_AFTER = {AFTER[0], AFTER[1]}


async def test_pipeline_resumes_after_the_broker_restarts_empty(
    env: dict[str, str], private_broker: TansuBroker, receiver: Receiver
) -> None:
    broker = private_broker
    penv = pipeline_env(env) | {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "HEALTHSCORE_PUBLISH_TIMEOUT_SECONDS": "2",
        "HEALTHSCORE_TOPIC_PARTITIONS": "3",  # not tansu's auto-create default (4)
    }
    procs = {n: ServiceProcess(n, penv) for n in ("ingest", "scoring", "alerts")}
    for p in procs.values():
        await asyncio.to_thread(p.start)
    try:
        await subscribe(procs["alerts"].url, f"{receiver.url}/a")
        client = Client(lambda: procs["ingest"].url)
        first = plan(BEFORE, DETRACTORS_BEFORE, per_account=60, seed=11, prefix="brk1")
        async with httpx.AsyncClient(timeout=15) as http:
            for i in range(0, len(first), 60):
                await client.post(http, first[i : i + 60], time.monotonic() + 30)
            accepted = list(client.accepted.values())
            diff = await wait_for_oracle(lambda: procs["scoring"].url, accepted, BEFORE, 60)
            assert diff == {}, diff
            await wait_for_webhooks(receiver, len(DETRACTORS_BEFORE), 30)

            broker.stop()
            down = []
            for n in range(3):
                body = {"events": [{"type": "login", "account_id": "brk-x", "user_id": f"u{n}"}]}
                r = await http.post(f"{procs['ingest'].url}/v1/events", json=body, headers=AUTH)
                down.append(r.status_code)
                assert r.status_code != 202, "a 202 while the broker is down"
                if r.status_code == 503:
                    assert int(r.headers["Retry-After"]) > 0
            assert down == [503, 503, 503]

            broker.start()  # same port, empty: no topics, offsets or groups
            second = plan(AFTER + BEFORE, DETRACTORS_AFTER, per_account=40, seed=12, prefix="brk2")
            # The client resends on 503 (same ids) until the producer reconnects.
            for i in range(0, len(second), 80):
                await client.post(http, second[i : i + 80], time.monotonic() + 60)
        accepted = list(client.accepted.values())
        diff = await wait_for_oracle(lambda: procs["scoring"].url, accepted, AFTER + BEFORE, 90)
        assert diff == {}, diff
        want = len(DETRACTORS_BEFORE) + len(DETRACTORS_AFTER)
        tally = await wait_for_webhooks(receiver, want, 60)
        record_figures(
            "broker_restart",
            {
                "events_sent": len(accepted),
                "events_sent_after_restart": len(second),
                "answers_while_down": down,
                "answers": dict(client.statuses),
                "accounts_matching_oracle": len(BEFORE + AFTER) - len(diff),
                "accounts": len(BEFORE + AFTER),
                "alerts_expected": want,
                "alerts_delivered": tally.delivered(),
                "webhook_requests": tally.requests,
            },
        )
        assert tally.accounts["/a"] == DETRACTORS_BEFORE | DETRACTORS_AFTER
        assert set(tally.alerts["/a"].values()) == {1}
        for name in ("ingest", "scoring", "alerts"):
            assert procs[name].proc is not None and procs[name].proc.poll() is None, name
        for topic in ("events.product", "events.communication", "health"):
            assert (
                await broker_partitions(broker, f"{penv['HEALTHSCORE_TOPIC_PREFIX']}.{topic}") == 3
            )
    finally:
        for p in procs.values():
            p.stop()


async def broker_partitions(broker: TansuBroker, topic: str) -> int:
    """How many partitions ``topic`` has on ``broker`` now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        [desc] = await admin.describe_topics([topic])
        return len(desc["partitions"])
    finally:
        await admin.close()
