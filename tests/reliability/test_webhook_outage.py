"""The webhook receiver down (nothing listening: connection refused) for a whole
stretch of the retry schedule (HEALTHSCORE_WEBHOOK_RETRY_SCHEDULE=0,1,2,3: four
attempts, 0 s, +1 s, +2 s, +3 s):

- it comes back before the last attempt → the alert is delivered, once (one
  distinct ``webhook-id``), every failed attempt recorded;
- it stays away past the last attempt → the documented behaviour (SPEC §7): the
  delivery is ``failed`` (listed by ``GET /v1/deliveries?status=failed``, counted
  in ``healthscore_webhook_deliveries_total{outcome="failed"}``), nothing more is
  sent on its own, and a replay once the receiver is back delivers it with the
  same ``webhook-id``."""

# The e2e module's `alerts` and `producer` fixtures are imported (with this module's
# `alerts_env`), so the tests' parameters of those names look like redefinitions.
# ruff: noqa: F401, F811

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.e2e.test_alerts_webhooks_e2e import (
    _with_status,
    account,
    alerts,
    api,
    deliveries_of,
    producer,
    publish,
    snapshot,
    subscribe,
    topic,
    wait_until,
)
from tests.infra import ServiceProcess
from tests.reliability.test_crash_matrix import pipeline_env
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(120)
SCHEDULE = "0,1,2,3"


@pytest.fixture(scope="module")
def alerts_env(env: dict[str, str]) -> dict[str, str]:
    """Overrides the e2e module's: the same service, this retry schedule."""
    return pipeline_env(env) | {
        "HEALTHSCORE_WEBHOOK_RETRY_SCHEDULE": SCHEDULE,
        "HEALTHSCORE_WEBHOOK_TIMEOUT": "1",
    }


async def down_receiver() -> Receiver:
    """A receiver with a port of its own that is not listening (yet)."""
    r = await Receiver().start()
    await r.stop()
    return r


async def alert_to(
    receiver: Receiver, alerts: ServiceProcess, producer: AIOKafkaProducer, env: dict[str, str]
) -> dict[str, Any]:
    """Subscribe ``receiver`` to a fresh account and make an alert fire for it."""
    acct = account()
    sub = await subscribe(alerts.url, receiver.url, acct, event_types=["alert.fired"])
    await publish(producer, topic(env), snapshot(acct, 1, nps=-50))
    return sub


async def attempts_made(base: str, webhook_id: str, at_least: int) -> list[dict[str, Any]] | None:
    ds = await deliveries_of(base, webhook_id)
    return ds if ds and len(ds[0]["attempt_log"]) >= at_least else None


async def test_receiver_back_within_the_schedule_gets_the_alert_once(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await down_receiver()
    try:
        sub = await alert_to(receiver, alerts, producer, alerts_env)
        await wait_until(lambda: attempts_made(alerts.url, sub["id"], 2), timeout=30)
        await receiver.start()  # same port: the receiver is back
        [d] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"), 30)
        log = d["attempt_log"]
        assert 3 <= len(log) <= 4, log  # delivered before the schedule ran out
        assert all(a["status_code"] is None and a["error"] for a in log[:-1]), log
        assert log[-1]["status_code"] == 200
        assert {r.headers["webhook-id"] for r in receiver.requests} == {d["id"]}
        assert len(receiver.requests) == 1
    finally:
        await receiver.stop()


async def test_schedule_exhausted_marks_the_delivery_failed_and_replay_delivers(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await down_receiver()
    try:
        sub = await alert_to(receiver, alerts, producer, alerts_env)
        [d] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "failed"), 30)
        assert len(d["attempt_log"]) == len(SCHEDULE.split(","))
        assert all(a["status_code"] is None for a in d["attempt_log"])
        r = await api("GET", alerts.url, "/v1/deliveries", params={"status": "failed"})
        assert d["id"] in {x["id"] for x in r.json()["deliveries"]}
        metrics = (await api("GET", alerts.url, "/metrics")).text
        assert 'healthscore_webhook_deliveries_total{outcome="failed"}' in metrics

        await receiver.start()
        r = await api("POST", alerts.url, f"/v1/deliveries/{d['id']}/replay")
        assert r.status_code == 200, r.text
        await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"), 30)
        assert [x.headers["webhook-id"] for x in receiver.requests] == [d["id"]]
    finally:
        await receiver.stop()
