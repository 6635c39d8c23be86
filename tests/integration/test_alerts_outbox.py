"""The alerts adapters on a real Postgres, in-process: the outbox written with the
alert, stale revisions skipped, two delivery workers sharing one outbox, and the
SSRF guard at connect time (resolution is faked, so no traffic ever leaves the
machine)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts import store
from services.alerts.consumer import apply_snapshots
from services.alerts.delivery import DeliveryWorker, make_client
from services.alerts.rules import Rule
from services.alerts.settings import AlertsSettings
from services.alerts.signing import generate_secret
from services.alerts.store import load_default_rules, notify_outbox, outbox_row
from services.alerts.tables import alerts, deliveries, delivery_attempts, rules, subscriptions
from shared import db
from shared.auth import KeyStore
from tests.infra import BOOTSTRAP_KEY
from tests.integration.test_alerts_delivery_http import serving, trickling
from tests.snapshots import snapshot
from tests.webhook_receiver import Receiver


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    e = db.create_engine(database_url)
    yield e
    await e.dispose()


def settings(env: dict[str, str], **extra: Any) -> AlertsSettings:
    return AlertsSettings(
        _env_file=None,  # type: ignore[call-arg]
        DATABASE_URL=env["DATABASE_URL"],
        KAFKA_BOOTSTRAP_SERVERS=env["KAFKA_BOOTSTRAP_SERVERS"],
        **extra,
    )


async def add_subscription(engine: AsyncEngine, sub_id: str, url: str, **kw: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            insert(subscriptions).values(
                id=sub_id,
                url=url,
                event_types=["alert.fired", "alert.resolved", "score.band_changed"],
                format="standard",
                enabled=True,
                secret=generate_secret(),
                **kw,
            )
        )


async def test_defaults_load_once_and_alert_and_outbox_share_a_transaction(
    engine: AsyncEngine,
) -> None:
    path = AlertsSettings.model_fields["rules_file"].default
    assert await load_default_rules(engine, path) == 9
    assert await load_default_rules(engine, path) == 0  # not empty any more: untouched
    await add_subscription(engine, "wh_tx", "http://127.0.0.1:9/never", filter_account_ids=["tx"])
    async with engine.begin() as conn:
        first = await apply_snapshots(conn, [snapshot("tx", 1, nps=-30)], "http://d")
        assert first.outbox_rows == 1 and first.transitions == [("negative-nps", "fired")]
        again = await apply_snapshots(
            conn, [snapshot("tx", 1, nps=-30), snapshot("tx", 0)], "http://d"
        )
        assert again.skipped_stale == 2 and again.outbox_rows == 0
    # a transaction that fails after evaluating leaves neither alert nor outbox row
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await apply_snapshots(conn, [snapshot("rolled", 1, nps=-30)], "http://d")
            raise RuntimeError("crash before commit")
    async with engine.connect() as conn:
        n_alerts = (
            await conn.execute(
                select(func.count()).where(alerts.c.account_id.in_(["tx", "rolled"]))
            )
        ).scalar_one()
        n_out = (
            await conn.execute(select(func.count()).where(deliveries.c.subscription_id == "wh_tx"))
        ).scalar_one()
        n_rules = (await conn.execute(select(func.count()).select_from(rules))).scalar_one()
    assert (n_alerts, n_out, n_rules) == (1, 1, 9)


async def test_two_workers_deliver_each_row_exactly_once(
    engine: AsyncEngine, env: dict[str, str]
) -> None:
    receiver = await Receiver().start()
    try:
        await add_subscription(engine, "wh_pair", receiver.url)
        rows = [outbox_row("wh_pair", "alert.fired", b'{"n":%d}' % i, None) for i in range(60)]
        async with engine.begin() as conn:
            await conn.execute(insert(deliveries).values(rows))
        s = settings(env, webhook_allowlist="127.0.0.1/32", delivery_concurrency=8)
        stop = asyncio.Event()
        clients = [make_client(s), make_client(s)]
        workers = [DeliveryWorker(s, engine, c) for c in clients]
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        await receiver.wait_for(60)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        for c in clients:
            await c.aclose()
        ids = [r.headers["webhook-id"] for r in receiver.requests]
        assert sorted(ids) == sorted(r["id"] for r in rows)  # each once, none twice
    finally:
        await receiver.stop()


@pytest.mark.parametrize(
    ("host", "resolved"),
    [
        pytest.param("metadata.example", ["169.254.169.254"], id="metadata"),
        pytest.param("intranet.example", ["10.0.0.1"], id="private"),
        pytest.param("rebind.example", ["93.184.216.34", "192.168.0.10"], id="mixed"),
        pytest.param("mapped.example", ["::ffff:10.0.0.1"], id="ipv4-mapped"),
        pytest.param("cgnat.example", ["100.64.1.1"], id="cgnat"),
    ],
)
async def test_ssrf_target_is_refused_at_connect_time(
    engine: AsyncEngine, env: dict[str, str], host: str, resolved: list[str]
) -> None:
    asked: list[str] = []

    async def fake_resolver(name: str, port: int) -> list[str]:
        asked.append(name)
        return resolved

    sub_id = "wh_ssrf_" + host.split(".")[0]
    await add_subscription(engine, sub_id, f"http://{host}/hook")
    row = outbox_row(sub_id, "alert.fired", b"{}", None)
    async with engine.begin() as conn:
        await conn.execute(insert(deliveries).values(row))
    s = settings(env, webhook_allowlist="127.0.0.1/32")
    client = make_client(s, resolver=fake_resolver)
    try:
        worker = DeliveryWorker(s, engine, client)
        [claimed] = [r for r in await worker.claim(100) if r["id"] == row["id"]]
        result = await worker.deliver(claimed)
    finally:
        await client.aclose()
    assert asked == [host]
    assert result is not None and result.outcome == "refused"
    async with engine.connect() as conn:
        status = (
            await conn.execute(select(deliveries.c.status).where(deliveries.c.id == row["id"]))
        ).scalar_one()
        error = (
            await conn.execute(
                select(delivery_attempts.c.error).where(
                    delivery_attempts.c.delivery_id == row["id"]
                )
            )
        ).scalar_one()
    assert status == "failed" and "SSRF" in error


async def test_outbox_notify_wakes_an_idle_worker(engine: AsyncEngine, env: dict[str, str]) -> None:
    """Rows written by another process (or a replay through the API) wake the worker
    through LISTEN/NOTIFY, not only after the (here: one minute) poll interval."""
    receiver = await Receiver().start()
    try:
        await add_subscription(engine, "wh_notify", receiver.url)
        s = settings(env, webhook_allowlist="127.0.0.1/32", delivery_poll_interval=60)
        stop = asyncio.Event()
        client = make_client(s)
        task = asyncio.create_task(DeliveryWorker(s, engine, client).run(stop))
        await asyncio.sleep(1.0)  # the worker is now idle, waiting
        row = outbox_row("wh_notify", "alert.fired", b"{}", None)
        async with engine.begin() as conn:
            await conn.execute(insert(deliveries).values(row))
            await notify_outbox(conn)
        [req] = await receiver.wait_for(1, timeout=30)
        assert req.headers["webhook-id"] == row["id"]
        stop.set()
        await task
        await client.aclose()
    finally:
        await receiver.stop()


async def test_a_stored_rule_that_is_no_longer_valid_is_skipped_not_fatal(
    engine: AsyncEngine,
) -> None:
    """Rules an older release accepted, on a KPI that does not exist or with a
    resolve_threshold on the wrong side (it would flap): evaluation skips them and
    keeps evaluating the others (no crash loop), the API can still read them."""
    legacy = {
        "id": "legacy-typo",
        "name": "typo",
        "kpi": "licence_utilization",
        "op": "<",
        "threshold": 0.5,
        "resolve_threshold": None,
        "for_evaluations": 1,
        "cooldown_seconds": 0.0,
        "respect_grace": True,
        "severity": "warning",
        "enabled": True,
    }
    flapping = legacy | {
        "id": "legacy-flap",
        "kpi": "touchpoints_30d",
        "threshold": 2,
        "resolve_threshold": 1,
    }
    valid = Rule(
        id="legacy-valid", name="few touchpoints", kpi="touchpoints_30d", op="<", threshold=2
    )
    async with engine.begin() as conn:
        await conn.execute(insert(rules).values([legacy, flapping]))
        await store.upsert_rules(conn, [valid])
    try:
        async with engine.begin() as conn:
            result = await apply_snapshots(
                conn,
                [snapshot("legacy", 1, touchpoints_30d=0, licence_utilization=0.1)],
                "http://d",
            )
            evaluated = {r.id for r in await store.list_rules(conn, enabled_only=True)}
            listed = await store.get_rule(conn, "legacy-typo")
            flap = await store.get_rule(conn, "legacy-flap")
        assert ("legacy-valid", "fired") in result.transitions
        assert {rule_id for rule_id, _ in result.transitions} == {"legacy-valid"}
        assert "legacy-valid" in evaluated and not {"legacy-typo", "legacy-flap"} & evaluated
        assert listed is not None and listed.kpi == "licence_utilization"
        assert flap is not None and flap.resolve_threshold == 1
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                delete(rules).where(rules.c.id.in_(["legacy-typo", "legacy-flap", "legacy-valid"]))
            )


async def test_a_trickling_receiver_gets_timed_out_attempts_that_never_overlap(
    engine: AsyncEngine, env: dict[str, str]
) -> None:
    """The receiver answers one byte every 0.2 s (20 s in all), two workers share the
    outbox. Each attempt ends at the 1 s deadline as a timeout and is retried on the
    schedule (0, 0.5 s, 0.5 s), then the delivery is failed; the receiver never sees
    two requests of this webhook-id at once (the lease outlasts every attempt)."""
    async with serving(trickling(length=100, every=0.2)) as server:
        await add_subscription(engine, "wh_trickle", f"http://127.0.0.1:{server.port}/hook")
        row = outbox_row("wh_trickle", "alert.fired", b"{}", None)
        async with engine.begin() as conn:
            await conn.execute(insert(deliveries).values(row))
        s = settings(
            env,
            webhook_allowlist="127.0.0.1/32",
            webhook_timeout=1,
            webhook_retry_schedule="0,0.5,0.5",
            webhook_retry_jitter=0,
            delivery_poll_interval=0.1,
        )
        stop = asyncio.Event()
        clients = [make_client(s), make_client(s)]
        workers = [DeliveryWorker(s, engine, c) for c in clients]
        assert all(w.lease.total_seconds() >= 2 * s.webhook_timeout for w in workers)
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        try:
            for _ in range(200):
                async with engine.connect() as conn:
                    status = (
                        await conn.execute(
                            select(deliveries.c.status).where(deliveries.c.id == row["id"])
                        )
                    ).scalar_one()
                if status != "pending":
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for c in clients:
                await c.aclose()
        for _ in range(50):  # the server notices the last client close within 0.2 s
            if len(server.spans) == len(server.requests):
                break
            await asyncio.sleep(0.1)
    assert status == "failed"
    spans = sorted((start, end) for wid, start, end in server.spans if wid == row["id"])
    assert len(spans) == 3, spans
    assert all(end - start < 1.8 for start, end in spans), spans  # cut at the deadline
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans)), spans
    async with engine.connect() as conn:
        log = (
            await conn.execute(
                select(
                    delivery_attempts.c.status_code,
                    delivery_attempts.c.error,
                    delivery_attempts.c.duration_seconds,
                )
                .where(delivery_attempts.c.delivery_id == row["id"])
                .order_by(delivery_attempts.c.attempt)
            )
        ).all()
    assert [code for code, _, _ in log] == [None, None, None]
    assert all(error.startswith("timeout") for _, error, _ in log), log
    assert all(1.0 <= duration < 1.8 for _, _, duration in log), log


async def test_a_delivery_of_a_deleted_webhook_is_not_replayed(
    engine: AsyncEngine, env: dict[str, str]
) -> None:
    """Nothing can send it any more (no URL, no secret): a replay would leave it pending
    for ever. The single replay answers 409, replay-all skips it and says so."""
    from services.alerts.app import create_app

    await add_subscription(engine, "wh_gone", "http://127.0.0.1:9/gone")
    await add_subscription(engine, "wh_kept", "http://127.0.0.1:9/kept")
    since = datetime.now(UTC) - timedelta(seconds=1)
    orphan = outbox_row("wh_gone", "alert.fired", b"{}", None) | {"status": "failed"}
    kept = outbox_row("wh_kept", "alert.fired", b"{}", None) | {"status": "failed"}
    async with engine.begin() as conn:
        await conn.execute(insert(deliveries).values([orphan, kept]))
        await conn.execute(delete(subscriptions).where(subscriptions.c.id == "wh_gone"))
        pending_before = await store.pending_count(conn)

    app = create_app(settings(env))
    app.state.engine = engine
    app.state.keys = KeyStore(engine, BOOTSTRAP_KEY)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://alerts",
        headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
    ) as api:
        one = await api.post(f"/v1/deliveries/{orphan['id']}/replay")
        assert one.status_code == 409, one.text
        assert "webhook was deleted" in one.json()["detail"]
        every = await api.post("/v1/deliveries/replay", params={"since": since.isoformat()})
        assert every.status_code == 200, every.text
        body = every.json()
        assert kept["id"] in body["ids"] and orphan["id"] not in body["ids"]
        assert body["skipped"] == 1 and body["skipped_reason"] == "their webhook was deleted"

    async with engine.begin() as conn:
        statuses = dict(
            (
                await conn.execute(
                    select(deliveries.c.id, deliveries.c.status).where(
                        deliveries.c.id.in_([orphan["id"], kept["id"]])
                    )
                )
            ).all()
        )
        assert statuses == {orphan["id"]: "failed", kept["id"]: "pending"}
        # only what was replayed is pending: the orphan does not linger in the outbox
        assert await store.pending_count(conn) == pending_before + body["replayed"]
        assert await store.replay(conn, delivery_id=orphan["id"]) == []
        await conn.execute(delete(deliveries).where(deliveries.c.id == kept["id"]))
