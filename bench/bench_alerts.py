"""Alerts: health snapshot → alert → signed webhook at a local receiver.

Starts the alerts service as a real process and subscribes a local receiver. One
warm-up snapshot goes first and the measurement starts once its webhook arrived:
the consumer group has joined and the connection to the receiver is open (what a
running service has; without it the snapshots published during the group join
arrive as one backlog and their drain dominated the p99). Then:

- steady: snapshots at ~100/s, each firing one alert (a new account with NPS
  below 0). Reports p50/p99 of alert recorded → webhook received (the alert's
  ``recorded_at`` in Postgres, the start of the consumer's transaction), p50/p99
  of snapshot published → webhook received, the split into alert → outbox row and
  outbox row → delivered, and deliveries/s;
- burst: 1,000 such snapshots published at once (a daily sweep that fires many
  alerts). Reports how long the last webhook took after the burst was published,
  and the delivery rate while draining it.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import orjson
from aiokafka import AIOKafkaProducer

from bench.context import BenchContext, Row
from shared.embedded import free_port
from tests.infra import BOOTSTRAP_KEY, ROOT
from tests.snapshots import snapshot

RATE = 100.0  # alerts per second, steady phase
BURST = 1000  # alerts published at once, burst phase


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")


async def _wait_lines(path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    # polling a file another process writes: no event to wait on
    while time.monotonic() < deadline and _lines(path) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def run(ctx: BenchContext) -> list[Row]:
    seconds = 5 if ctx.quick else 30
    total = int(RATE * seconds)
    burst = 100 if ctx.quick else BURST
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
    topic = f"{prefix}.health"
    published: dict[str, float] = {}
    try:
        warm = f"bench_{run_id}_warm"
        await producer.send_and_wait(topic, snapshot(warm, nps=-40).encode(), key=warm.encode())
        await _wait_lines(received_log, 1)
        start = time.perf_counter()
        for i in range(total):
            due = start + i / RATE
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            acct = f"bench_{run_id}_{i}"
            published[acct] = time.time()
            await producer.send(topic, snapshot(acct, nps=-40).encode(), key=acct.encode())
        await producer.flush()
        await _wait_lines(received_log, 1 + total)
        burst_ids = [f"bench_{run_id}_burst_{i}" for i in range(burst)]
        bodies = [snapshot(a, nps=-40).encode() for a in burst_ids]
        burst_at = time.time()
        for acct, body in zip(burst_ids, bodies, strict=True):
            await producer.send(topic, body, key=acct.encode())
        await producer.flush()
        await _wait_lines(received_log, 1 + total + burst)
    finally:
        await producer.stop()
        receiver.terminate()
        receiver.wait(10)
    received: dict[str, tuple[str, float]] = {}
    for line in received_log.read_text().splitlines():
        rec = orjson.loads(line)
        data = orjson.loads(rec["body"])["data"]
        received[data["alert_id"]] = (data["account_id"], rec["at"])
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT id, account_id, recorded_at FROM alerts")
        stages = await conn.fetch(
            "SELECT a.account_id, extract(epoch FROM d.created_at - a.recorded_at) AS processing,"
            " extract(epoch FROM d.delivered_at - d.created_at) AS delivery "
            "FROM alerts a JOIN webhook_deliveries d ON d.alert_id = a.id"
        )
    finally:
        await conn.close()
    recorded = {r["id"]: r["recorded_at"].timestamp() for r in rows}
    steady = [(aid, acct, at) for aid, (acct, at) in received.items() if acct in published]
    alert_lat = [at - recorded[aid] for aid, _acct, at in steady if aid in recorded]
    e2e_lat = [at - published[acct] for _aid, acct, at in steady]
    times = sorted(at for _aid, _acct, at in steady)
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    processing = [float(r["processing"]) for r in stages if r["account_id"] in published]
    delivery = [
        float(r["delivery"])
        for r in stages
        if r["account_id"] in published and r["delivery"] is not None
    ]
    in_burst = set(burst_ids)
    burst_times = sorted(at for acct, at in received.values() if acct in in_burst)
    burst_first = min(
        (r["recorded_at"].timestamp() for r in rows if r["account_id"] in in_burst),
        default=float("nan"),
    )
    drained = burst_times[-1] - burst_at if burst_times else float("nan")
    burst_rate = (
        (len(burst_times) - 1) / (burst_times[-1] - burst_first)
        if len(burst_times) > 1
        else float("nan")
    )
    note = f"{len(steady)} alerts at {RATE:.0f}/s after a warm-up alert, one local receiver"
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
        Row(
            "alerts",
            f"burst of {burst}: published → last webhook received",
            drained * 1000,
            "ms",
            f"{len(burst_times)} of {burst} received",
        ),
        Row(
            "alerts",
            "burst: deliveries per second (first alert recorded → last received)",
            burst_rate,
            "1/s",
        ),
    ]
