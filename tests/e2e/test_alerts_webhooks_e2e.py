"""The alerts service as a real process: health snapshots produced to the real
broker's health topic → rules → signed webhooks to real local HTTP receivers.

Each test uses its own account id and a subscription filtered on it, so tests
sharing the process never see each other's webhooks.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from standardwebhooks.webhooks import Webhook

from shared.health import KPI_NAMES, HealthSnapshot
from tests.infra import BOOTSTRAP_KEY, ServiceProcess
from tests.snapshots import snapshot
from tests.webhook_receiver import Answer, Receiver, always, fail_then_succeed

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def alerts_env(env: dict[str, str]) -> dict[str, str]:
    return env | {
        "HEALTHSCORE_WEBHOOK_ALLOWLIST": "127.0.0.1/32",
        "HEALTHSCORE_WEBHOOK_RETRY_SCHEDULE": "0,1,1,1,1",
        "HEALTHSCORE_WEBHOOK_RETRY_JITTER": "0",
        "HEALTHSCORE_WEBHOOK_TIMEOUT": "1",
        "HEALTHSCORE_DELIVERY_POLL_INTERVAL": "0.2",
        "HEALTHSCORE_DASHBOARD_URL": "https://hs.example.com",
    }


@pytest.fixture(scope="module")
def alerts(alerts_env: dict[str, str]) -> Iterator[ServiceProcess]:
    proc = ServiceProcess("alerts", alerts_env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def producer(alerts_env: dict[str, str]) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(bootstrap_servers=alerts_env["KAFKA_BOOTSTRAP_SERVERS"], acks="all")
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def account() -> str:
    return "acct_" + secrets.token_hex(4)


async def publish(producer: AIOKafkaProducer, topic: str, *snaps: HealthSnapshot) -> None:
    for s in snaps:
        await producer.send_and_wait(topic, s.encode(), key=s.account_id.encode())


async def api(method: str, base: str, path: str, **kw: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as c:
        return await c.request(method, path, **kw)


async def subscribe(base: str, url: str, account_id: str, **extra: Any) -> dict[str, Any]:
    body = {"url": url, "filters": {"account_ids": [account_id]}} | extra
    r = await api("POST", base, "/v1/webhooks", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def wait_until(check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout}s (last: {value!r})")
        await asyncio.sleep(0.2)


async def deliveries_of(base: str, webhook_id: str) -> list[dict[str, Any]]:
    r = await api("GET", base, "/v1/deliveries", params={"subscription_id": webhook_id})
    assert r.status_code == 200, r.text
    return list(r.json()["deliveries"])


def topic(env: dict[str, str]) -> str:
    return f"{env['HEALTHSCORE_TOPIC_PREFIX']}.health"


async def test_rule_fires_after_n_signed_once_and_resolves_with_hysteresis(
    alerts: ServiceProcess,
    producer: AIOKafkaProducer,
    receiver: Receiver,
    alerts_env: dict[str, str],
) -> None:
    acct = account()
    rule = {
        "id": f"util-{acct}",
        "name": "Low utilisation",
        "kpi": "license_utilization",
        "op": "<",
        "threshold": 0.5,
        "resolve_threshold": 0.6,
        "for_evaluations": 2,
        "cooldown": "1h",
        "severity": "critical",
    }
    r = await api("POST", alerts.url, "/v1/rules", json=rule)
    assert r.status_code == 201, r.text
    # the shipped default rule on the same KPI fires too; the filter keeps only ours
    sub = await subscribe(
        alerts.url,
        receiver.url + "/hook",
        acct,
        filters={"account_ids": [acct], "rule_ids": [rule["id"]]},
    )
    t = topic(alerts_env)
    first = snapshot(acct, 1, license_utilization=0.4)
    second = snapshot(acct, 2, license_utilization=0.3)
    # rev 1 breaches once (for_evaluations=2: nothing yet); rev 2 fires; rev 1 and 2
    # redelivered change nothing; 0.55 is between the thresholds; 0.7 resolves.
    await publish(producer, t, first, second, first, second)
    await publish(producer, t, snapshot(acct, 3, license_utilization=0.55))
    await publish(producer, t, snapshot(acct, 4, license_utilization=0.7))
    got = await receiver.wait_for(2)
    await asyncio.sleep(1.0)  # anything extra (a duplicate) would arrive now
    assert len(receiver.requests) == 2
    # deliveries are concurrent: no order between the two (the docs say so)
    by_type = {orjson.loads(x.body)["type"]: orjson.loads(x.body) for x in got}
    fired, resolved = by_type["alert.fired"], by_type["alert.resolved"]
    assert fired["type"] == "alert.fired" and resolved["type"] == "alert.resolved"
    assert fired["data"]["value"] == 0.3 and fired["data"]["rule"]["id"] == rule["id"]
    assert resolved["data"]["value"] == 0.7
    assert fired["data"]["alert_id"] == resolved["data"]["alert_id"]
    wh = Webhook(sub["secret"])
    for req in got:
        assert wh.verify(req.body, req.headers) == orjson.loads(req.body)
    assert got[0].headers["webhook-id"] != got[1].headers["webhook-id"]
    r = await api(
        "GET", alerts.url, "/v1/alerts", params={"account_id": acct, "rule_id": rule["id"]}
    )
    [alert] = r.json()["alerts"]
    assert alert["status"] == "resolved" and alert["value"] == 0.3
    assert alert["resolved_value"] == 0.7


async def test_default_rules_and_band_change_through_the_broker(
    alerts: ServiceProcess,
    producer: AIOKafkaProducer,
    receiver: Receiver,
    alerts_env: dict[str, str],
) -> None:
    acct = account()
    await subscribe(alerts.url, receiver.url, acct, format="slack")
    # a corrupt message on the topic is skipped; the consumer keeps going
    await producer.send_and_wait(topic(alerts_env), b"not json", key=acct.encode())
    await publish(
        producer,
        topic(alerts_env),
        snapshot(acct, 1, band="yellow", score=55.0, nps=10),
        snapshot(acct, 2, band="red", score=30.0, nps=-20),
    )
    await receiver.wait_for(3)
    texts = sorted(orjson.loads(x.body)["text"] for x in receiver.requests)
    assert any("NPS below 0" in t for t in texts)
    assert any("Health band became red" in t for t in texts)
    assert any("yellow → red" in t for t in texts)
    assert all("webhook-signature" not in x.headers for x in receiver.requests)  # Slack: unsigned

    async def metrics_text() -> str | None:
        text = (await api("GET", alerts.url, "/metrics")).text
        return text if 'healthscore_webhook_deliveries_total{outcome="delivered"}' in text else None

    metrics = await wait_until(metrics_text)
    assert 'healthscore_alerts_total{rule="negative-nps",transition="fired"}' in metrics
    assert "healthscore_alert_to_delivery_seconds_bucket" in metrics
    assert "healthscore_webhook_outbox_pending" in metrics


async def test_grace_period_and_lifecycle_through_the_broker(
    alerts: ServiceProcess,
    producer: AIOKafkaProducer,
    receiver: Receiver,
    alerts_env: dict[str, str],
) -> None:
    acct = account()
    r = await api(
        "PUT",
        alerts.url,
        f"/v1/rules/renewal-{acct}",
        json={
            "name": "Renewal at risk",
            "kpi": "touchpoints_30d",
            "op": "<",
            "threshold": 3,
            "lifecycle_stages": ["renewal"],
        },
    )
    assert r.status_code == 200, r.text
    await subscribe(alerts.url, receiver.url, acct, event_types=["alert.fired"])
    t = topic(alerts_env)
    in_grace = snapshot(acct, 1, nps=-50, touchpoints_30d=0, in_grace_period=True)
    # stage "customer" (not renewal) and out of grace: only the NPS rule fires
    await publish(producer, t, in_grace, snapshot(acct, 2, nps=-50, touchpoints_30d=0))
    [req] = await receiver.wait_for(1)
    body = orjson.loads(req.body)
    assert body["data"]["rule"]["id"] == "negative-nps"
    r = await api("GET", alerts.url, "/v1/alerts", params={"account_id": acct})
    [alert] = r.json()["alerts"]
    assert alert["snapshot"]["revision"] == 2  # not on the grace-period snapshot
    await asyncio.sleep(1.0)
    assert len(receiver.requests) == 1


async def test_failing_receiver_gets_the_same_webhook_id_until_it_succeeds(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await Receiver(fail_then_succeed(2, status=503)).start()
    try:
        acct = account()
        sub = await subscribe(alerts.url, receiver.url, acct, event_types=["alert.fired"])
        await publish(producer, topic(alerts_env), snapshot(acct, 1, nps=-50))
        got = await receiver.wait_for(3)
        assert len({x.headers["webhook-id"] for x in got}) == 1
        [d] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"), timeout=30)
        assert d["id"] == got[0].headers["webhook-id"]
        assert [a["status_code"] for a in d["attempt_log"]] == [503, 503, 200]
    finally:
        await receiver.stop()


async def _with_status(base: str, webhook_id: str, status: str) -> list[dict[str, Any]] | None:
    ds = await deliveries_of(base, webhook_id)
    return ds if ds and all(d["status"] == status for d in ds) else None


async def test_slow_receiver_times_out_and_is_retried(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await Receiver(lambda n, _r: Answer(200, delay=3.0 if n == 1 else 0)).start()
    try:
        acct = account()
        sub = await subscribe(alerts.url, receiver.url, acct, event_types=["alert.fired"])
        await publish(producer, topic(alerts_env), snapshot(acct, 1, nps=-50))
        [d] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"))
        first, second = d["attempt_log"]
        assert first["status_code"] is None and first["error"].startswith("timeout")
        assert second["status_code"] == 200
    finally:
        await receiver.stop()


async def test_410_disables_the_subscription(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await Receiver(always(410)).start()
    try:
        acct = account()
        sub = await subscribe(alerts.url, receiver.url, acct)
        await publish(producer, topic(alerts_env), snapshot(acct, 1, nps=-50))
        await wait_until(lambda: _with_status(alerts.url, sub["id"], "disabled"))
        r = await api("GET", alerts.url, f"/v1/webhooks/{sub['id']}")
        assert r.json()["enabled"] is False and "410" in r.json()["disabled_reason"]
        await publish(producer, topic(alerts_env), snapshot(acct, 2, nps=50, band="red"))
        await asyncio.sleep(1.5)
        assert len(receiver.requests) == 1  # nothing more goes to a disabled subscription
        r = await api("PATCH", alerts.url, f"/v1/webhooks/{sub['id']}", json={"enabled": True})
        assert r.status_code == 200 and r.json()["enabled"] is True
    finally:
        await receiver.stop()


async def test_redirect_is_a_failure_not_followed_then_replayed(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    target = await Receiver().start()
    receiver = await Receiver(always(302, location=target.url + "/elsewhere")).start()
    try:
        acct = account()
        sub = await subscribe(alerts.url, receiver.url, acct, event_types=["alert.fired"])
        await publish(producer, topic(alerts_env), snapshot(acct, 1, nps=-50))
        [d] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "failed"))
        assert [a["status_code"] for a in d["attempt_log"]] == [302] * 5
        assert "not followed" in d["last_error"]
        assert target.requests == []
        r = await api("GET", alerts.url, "/v1/deliveries", params={"status": "failed"})
        assert d["id"] in {x["id"] for x in r.json()["deliveries"]}
        # the receiver is fixed; replay sends the same webhook-id again
        receiver.behaviour = always(200)
        r = await api("POST", alerts.url, f"/v1/deliveries/{d['id']}/replay")
        assert r.status_code == 200, r.text
        [d2] = await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"))
        assert receiver.requests[-1].headers["webhook-id"] == d["id"] == d2["id"]
        r = await api("POST", alerts.url, f"/v1/deliveries/{d['id']}/replay")
        assert r.status_code == 409
    finally:
        await receiver.stop()
        await target.stop()


async def test_replay_all_failed_since(
    alerts: ServiceProcess, producer: AIOKafkaProducer, alerts_env: dict[str, str]
) -> None:
    receiver = await Receiver(always(500)).start()
    try:
        acct = account()
        since = datetime.now(UTC) - timedelta(seconds=5)
        sub = await subscribe(alerts.url, receiver.url, acct)
        await publish(
            producer,
            topic(alerts_env),
            snapshot(acct, 1, nps=-50, band="red", previous_band="green"),
        )
        ds = await wait_until(lambda: _with_status(alerts.url, sub["id"], "failed"))
        receiver.behaviour = always(204)
        r = await api(
            "POST", alerts.url, "/v1/deliveries/replay", params={"since": since.isoformat()}
        )
        assert r.status_code == 200 and set(r.json()["ids"]) >= {d["id"] for d in ds}
        await wait_until(lambda: _with_status(alerts.url, sub["id"], "delivered"))
        bad = await api("POST", alerts.url, "/v1/deliveries/replay", params={"since": "yesterday"})
        assert bad.status_code == 422
    finally:
        await receiver.stop()


async def test_rotation_sends_both_signatures_and_test_endpoint(
    alerts: ServiceProcess, receiver: Receiver
) -> None:
    sub = await subscribe(alerts.url, receiver.url, account())
    r = await api("POST", alerts.url, f"/v1/webhooks/{sub['id']}/rotate-secret")
    assert r.status_code == 200
    new_secret = r.json()["secret"]
    assert new_secret != sub["secret"] and new_secret.startswith("whsec_")
    r = await api("POST", alerts.url, f"/v1/webhooks/{sub['id']}/test")
    assert r.status_code == 200 and r.json()["delivered"] is True, r.text
    [req] = receiver.requests
    assert len(req.headers["webhook-signature"].split(" ")) == 2
    for secret in (sub["secret"], new_secret):
        assert Webhook(secret).verify(req.body, req.headers)["type"] == "webhook.test"
    r = await api("POST", alerts.url, "/v1/webhooks/wh_nope/rotate-secret")
    assert r.status_code == 404
    slack = await subscribe(alerts.url, receiver.url + "/slack", account(), format="slack")
    r = await api("POST", alerts.url, f"/v1/webhooks/{slack['id']}/test")
    assert r.status_code == 200 and r.json()["delivered"] is True, r.text
    assert "Test message" in orjson.loads(receiver.requests[-1].body)["text"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"url": "ftp://example.com/x"}, 422, id="not-http"),
        pytest.param({"url": "http://10.0.0.1/hook"}, 422, id="private-ip"),
        pytest.param({"url": "http://169.254.169.254/latest"}, 422, id="metadata"),
        pytest.param({"url": "https://user:pw@example.com/"}, 422, id="credentials"),
        pytest.param({"url": "https://example.com/", "format": "xml"}, 422, id="format"),
        pytest.param({"url": "https://example.com/", "event_types": ["x"]}, 422, id="type"),
    ],
)
async def test_bad_webhooks_are_refused(
    alerts: ServiceProcess, body: dict[str, Any], status: int
) -> None:
    r = await api("POST", alerts.url, "/v1/webhooks", json=body)
    assert r.status_code == status, r.text


async def test_admin_api_errors_and_scope(alerts: ServiceProcess) -> None:
    assert (await api("GET", alerts.url, "/v1/rules/none")).status_code == 404
    r = await api("POST", alerts.url, "/v1/rules", json={"name": "x", "kpi": "nps", "op": "~"})
    assert r.status_code == 422
    r = await api(
        "POST",
        alerts.url,
        "/v1/rules",
        json={"id": "champion-left", "name": "x", "kpi": "nps", "op": "<", "threshold": 0},
    )
    assert r.status_code == 409  # the defaults were loaded on first start
    r = await api("PATCH", alerts.url, "/v1/rules/champion-left", json={"op": "<"})
    assert r.status_code == 422  # a boolean KPI takes == or != only
    r = await api("PUT", alerts.url, "/v1/rules/a", json={"id": "b", "name": "x", "kpi": "nps"})
    assert r.status_code == 422  # the same error format as every other invalid body
    assert r.json()["errors"] == [
        {"field": "body.id", "message": "the id in the body differs from the id in the path"}
    ]
    r = await api("GET", alerts.url, "/v1/deliveries", params={"status": "weird"})
    assert r.status_code == 422
    nul = {"name": "a\u0000b", "kpi": "nps", "op": "<", "threshold": 0}
    r = await api("POST", alerts.url, "/v1/rules", json=nul)
    assert r.status_code == 422, r.text  # PostgreSQL text cannot hold NUL: a 4xx, not a 500
    r = await api("POST", alerts.url, "/v1/webhooks", json={"url": "https://e.com/\u0000"})
    assert r.status_code == 422, r.text
    assert (await api("GET", alerts.url, "/v1/rules/a%00b")).status_code == 400
    r = await api("GET", alerts.url, "/v1/alerts", params={"account_id": "a\u0000"})
    assert r.status_code == 400
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{alerts.url}/v1/rules")).status_code == 401


AUDIT_RULE = {
    "id": "audit-x",
    "name": "x",
    "kpi": "nonsense",
    "op": "<",
    "threshold": 1,
    "severity": "warning",
}


@pytest.mark.parametrize(
    ("method", "path", "body", "field", "message"),
    [
        pytest.param("POST", "/v1/rules", AUDIT_RULE, "kpi", "unknown KPI 'nonsense'", id="post"),
        pytest.param(
            "PUT", "/v1/rules/audit-x", AUDIT_RULE, "kpi", "unknown KPI 'nonsense'", id="put"
        ),
        pytest.param(
            "PATCH",
            "/v1/rules/low-license-utilization",
            {"kpi": "licence_utilization"},
            "kpi",
            "did you mean 'license_utilization'?",
            id="patch-typo",
        ),
        pytest.param(
            "POST",
            "/v1/rules",
            {"name": "x", "kpi": "champion_left", "op": "<", "threshold": True},
            "op",
            "champion_left is true or false: compare it with == or !=",
            id="boolean-kpi-ordering",
        ),
        pytest.param(
            "PATCH",
            "/v1/rules/champion-left",
            {"threshold": 1},
            "threshold",
            "champion_left is true or false",
            id="boolean-kpi-number",
        ),
        pytest.param(
            "POST",
            "/v1/rules",
            {"name": "x", "kpi": "band", "op": "==", "threshold": 2},
            "threshold",
            "band is green, yellow or red",
            id="band-number",
        ),
        pytest.param(
            "PUT",
            "/v1/rules/audit-y",
            {"name": "x", "kpi": "nps", "op": "<", "threshold": "low"},
            "threshold",
            "nps is a number",
            id="number-kpi-string",
        ),
        pytest.param(
            "PATCH",
            "/v1/rules/negative-nps",
            {"resolve_threshold": True},
            "resolve_threshold",
            "nps is a number",
            id="resolve-threshold",
        ),
        pytest.param(
            "POST",
            "/v1/rules",
            {
                "name": "x",
                "kpi": "license_utilization",
                "op": "<",
                "threshold": 0.5,
                "resolve_threshold": 0.4,
            },
            "resolve_threshold",
            "with < 0.5 the resolve_threshold must be at or above the threshold",
            id="resolve-threshold-wrong-side",
        ),
    ],
)
async def test_rules_on_unknown_kpis_or_mismatched_types_are_refused(
    alerts: ServiceProcess,
    method: str,
    path: str,
    body: dict[str, Any],
    field: str,
    message: str,
) -> None:
    before = (await api("GET", alerts.url, "/v1/rules")).json()
    r = await api(method, alerts.url, path, json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == [f"body.{field}"], errors
    assert message in errors[0]["message"]
    if field == "kpi":  # the answer lists every name a rule may use
        assert errors[0]["message"].endswith(
            "a rule's kpi is one of: " + ", ".join((*KPI_NAMES, "score", "score_delta_7d", "band"))
        )
    assert (await api("GET", alerts.url, "/v1/rules")).json() == before  # nothing stored


async def test_kill_9_between_alert_and_delivery_delivers_once_after_restart(
    alerts: ServiceProcess,
    producer: AIOKafkaProducer,
    alerts_env: dict[str, str],
    database_url: str,
) -> None:
    receiver = Receiver()  # not listening yet: the first attempts cannot connect
    from shared.embedded import free_port

    receiver.port = free_port()
    acct = account()
    subs = [
        await subscribe(alerts.url, f"{receiver.url}/{n}", acct, event_types=["alert.fired"])
        for n in ("a", "b")
    ]
    await publish(producer, topic(alerts_env), snapshot(acct, 1, nps=-50))
    conn = await asyncpg.connect(database_url)
    try:

        async def attempted() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM webhook_deliveries WHERE subscription_id = ANY($1) "
                "AND attempts >= 1",
                [s["id"] for s in subs],
            )
            return bool(n == 2)

        await wait_until(attempted)
        alerts.kill()  # kill -9: the alert is recorded, its deliveries are not done
        ids = await conn.fetch(
            "SELECT id, status FROM webhook_deliveries WHERE subscription_id = ANY($1)",
            [s["id"] for s in subs],
        )
        assert {r["status"] for r in ids} == {"pending"}
        await receiver.start()
        alerts.start()
        got = await receiver.wait_for(2)
        await asyncio.sleep(1.5)
        assert len(receiver.requests) == 2  # once per subscription
        assert sorted(x.path for x in got) == ["/a", "/b"]
        assert {x.headers["webhook-id"] for x in got} == {r["id"] for r in ids}
        n = await conn.fetchval("SELECT count(*) FROM alerts WHERE account_id = $1", acct)
        assert n == 1
        assert alerts.stop() == 0  # SIGTERM: workers finish and the process exits cleanly
    finally:
        await conn.close()
        await receiver.stop()
