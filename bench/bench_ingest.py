"""Ingest throughput: events/s through ``POST /v1/events`` (the service as a real
process, batches of 500, several concurrent clients) next to the raw aiokafka
producer loop (a plain ``send()`` per message, then gather) on the same payloads
and the same broker. The goal (issue 3): ingest ≥ 2× the raw loop.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from bench.context import BenchContext, Row
from services.ingest.settings import IngestSettings
from shared.kafka import ensure_topics, make_producer
from tests.infra import BOOTSTRAP_KEY
from tests.ingest_helpers import settings_from

BATCH = 500
CLIENTS = 8
ACCOUNTS = 200


def make_events(n: int, tag: str) -> list[dict[str, Any]]:
    ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    out: list[dict[str, Any]] = []
    for i in range(n):
        account = f"acct-{i % ACCOUNTS}"
        base = {"id": f"{tag}-{i}", "account_id": account, "timestamp": ts}
        k = i % 4
        if k == 0:
            out.append({**base, "type": "login", "user_id": f"u{i % 5000}"})
        elif k == 1:
            out.append(
                {
                    **base,
                    "type": "feature_used",
                    "user_id": f"u{i % 5000}",
                    "feature": "reports",
                    "count": 2,
                }
            )
        elif k == 2:
            out.append(
                {**base, "type": "session", "user_id": f"u{i % 5000}", "duration_seconds": 321.5}
            )
        else:
            out.append(
                {
                    **base,
                    "type": "communication",
                    "channel": "email",
                    "direction": "inbound",
                    "contact_id": f"c{i % 900}",
                    "sentiment": 0.25,
                }
            )
    return out


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest_rate(url: str, bodies: list[bytes]) -> float:
    """Events/s for posting every body, CLIENTS at a time."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", "Content-Type": "application/json"}
    failures: list[str] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            r = await client.post(f"{url}/v1/events", content=body, headers=headers)
            if r.status_code != 202:
                failures.append(f"{r.status_code} {r.text[:200]}")

    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        # warm-up (connections, producer metadata)
        await client.post(f"{url}/v1/events", content=bodies[0], headers=headers)
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(CLIENTS)))
        elapsed = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return (len(bodies) - 1) * BATCH / elapsed  # the warm-up body was re-sent by a worker too


async def raw_rate(settings: IngestSettings, events: list[dict[str, Any]]) -> tuple[float, float]:
    """Messages/s for the plain aiokafka loop (send() per message, then gather),
    and its CPU seconds."""
    topics = settings.topics
    payloads = [
        (
            topics.communication if e["type"] == "communication" else topics.product,
            e["account_id"].encode(),
            orjson.dumps(e),
        )
        for e in events
    ]
    producer = make_producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(payloads[0][0], payloads[0][2], key=payloads[0][1])
        start, cpu = time.perf_counter(), time.process_time()
        futures = [await producer.send(t, v, key=k) for t, k, v in payloads]
        await asyncio.gather(*futures)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await producer.stop()
    return len(payloads) / elapsed, cpu


async def run(ctx: BenchContext) -> list[Row]:
    n = 60_000 if ctx.quick else 250_000
    url_db = await ctx.database("ingest")
    env = ctx.env(url_db, ctx.topic_prefix(), HEALTHSCORE_LOG_LEVEL="WARNING")
    settings = settings_from(env)
    await ensure_topics(settings)
    proc = ctx.service("ingest", env)
    await asyncio.to_thread(proc.start)

    events = make_events(n, "ing")
    bodies = [orjson.dumps({"events": events[i : i + BATCH]}) for i in range(0, n, BATCH)]
    assert proc.proc is not None
    server_cpu = process_cpu_seconds(proc.proc.pid)
    ingest = await ingest_rate(proc.url, bodies)
    server_cpu = process_cpu_seconds(proc.proc.pid) - server_cpu
    raw, raw_cpu = await raw_rate(settings, make_events(n, "raw"))
    note = f"{n:,} events, {BATCH}/request, {CLIENTS} clients"
    return [
        Row("ingest", "POST /v1/events throughput", ingest, "events/s", note),
        Row("ingest", "raw aiokafka send()+gather loop", raw, "msg/s", f"{n:,} messages"),
        Row("ingest", "ingest / raw loop", ingest / raw, "x", "goal ≥ 2"),
        Row("ingest", "ingest server CPU per event", server_cpu / n * 1e6, "µs", "whole process"),
        Row("ingest", "raw loop CPU per message", raw_cpu / n * 1e6, "µs", "client process"),
    ]
