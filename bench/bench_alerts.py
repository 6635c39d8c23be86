"""Alerts: health snapshot → alert → signed webhook at a local receiver.

Starts the alerts service as a real process, subscribes a local receiver, then
publishes health snapshots at ~100/s, each firing one alert (a new account with
NPS below 0). Reports p50/p99 of alert recorded → webhook received (the alert's
``recorded_at`` in Postgres, which is the start of the consumer's transaction),
p50/p99 of snapshot published → webhook received, and deliveries/s.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.context import BenchContext, Row
from shared.embedded import free_port
from shared.health import HealthSnapshot
from tests.infra import BOOTSTRAP_KEY, ROOT

RATE = 100.0  # alerts per second


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


async def run(ctx: BenchContext) -> list[Row]:
    seconds = 5 if ctx.quick else 30
    total = int(RATE * seconds)
    url = await ctx.database("alerts")
    prefix = ctx.topic_prefix()
    env = ctx.env(
        url,
        prefix,
        HEALTHSCORE_WEBHOOK_ALLOWLIST="127.0.0.1/32",
        HEALTHSCORE_LOG_LEVEL="WARNING",
    )
    # The receiver runs in its own process so that it does not compete with the
    # producer of this process: the numbers are the alerts service's.
    rport = free_port()
    received_log = Path(tempfile.mkdtemp(prefix="bench-alerts-")) / "received.jsonl"
    receiver = subprocess.Popen(  # noqa: ASYNC220 - starts in milliseconds
        [sys.executable, "-m", "tests.webhook_receiver", str(rport), str(received_log)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert receiver.stdout is not None
    await asyncio.to_thread(receiver.stdout.readline)  # "ready"
    receiver_url = f"http://127.0.0.1:{rport}"
    proc = ctx.service("alerts", env)
    await asyncio.to_thread(proc.start)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"}) as c:
        r = await c.post(
            f"{proc.url}/v1/webhooks", json={"url": receiver_url, "event_types": ["alert.fired"]}
        )
        r.raise_for_status()
    producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"], linger_ms=0)
    await producer.start()
    run_id = secrets.token_hex(3)
    published: dict[str, float] = {}
    try:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            acct = f"bench_{run_id}_{i}"
            snap = HealthSnapshot(
                account_id=acct,
                revision=1,
                as_of=date.today(),
                evaluated_at=datetime.now(UTC),
                trigger="events",
                score=70.0,
                band="green",
                coverage=1.0,
                model_version="bench",
                in_grace_period=False,
                kpis={"nps": -40},
                measures=[],
            )
            published[acct] = time.time()
            await producer.send(f"{prefix}.health", snap.encode(), key=acct.encode())
        await producer.flush()
        deadline = time.monotonic() + 120
        # polling a file another process writes: no event to wait on
        while time.monotonic() < deadline and _lines(received_log) < total:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        await producer.stop()
        receiver.terminate()
        receiver.wait(10)
    received = {}
    for line in received_log.read_text().splitlines():
        rec = orjson.loads(line)
        data = orjson.loads(rec["body"])["data"]
        received[data["alert_id"]] = (data["account_id"], rec["at"])
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, recorded_at FROM alerts")
        stages = await conn.fetch(
            "SELECT extract(epoch FROM d.created_at - a.recorded_at) AS processing, "
            "extract(epoch FROM d.delivered_at - d.created_at) AS delivery "
            "FROM alerts a JOIN webhook_deliveries d ON d.alert_id = a.id"
        )
    finally:
        await conn.close()
    recorded = {r["id"]: r["recorded_at"].timestamp() for r in rows}
    alert_lat = [at - recorded[aid] for aid, (_a, at) in received.items() if aid in recorded]
    e2e_lat = [at - published[acct] for acct, at in received.values() if acct in published]
    times = sorted(at for _a, at in received.values())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    processing = [float(r["processing"]) for r in stages]
    delivery = [float(r["delivery"]) for r in stages if r["delivery"] is not None]
    note = f"{len(received)} alerts at {RATE:.0f}/s, one local receiver"
    return [
        Row(
            "alerts",
            "alert recorded → webhook received p50",
            _pct(alert_lat, 50) * 1000,
            "ms",
            note,
        ),
        Row(
            "alerts",
            "alert recorded → webhook received p99",
            _pct(alert_lat, 99) * 1000,
            "ms",
            "goal < 500 ms",
        ),
        Row("alerts", "snapshot published → webhook received p50", _pct(e2e_lat, 50) * 1000, "ms"),
        Row("alerts", "snapshot published → webhook received p99", _pct(e2e_lat, 99) * 1000, "ms"),
        Row("alerts", "alert recorded → outbox row written p99", _pct(processing, 99) * 1000, "ms"),
        Row("alerts", "outbox row written → delivered p99", _pct(delivery, 99) * 1000, "ms"),
        Row("alerts", "webhook deliveries per second", rate, "1/s", "paced by the 100/s input"),
    ]
