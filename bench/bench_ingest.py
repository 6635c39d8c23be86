"""Ingest throughput: events/s through ``POST /v1/events`` (the service as a real
process, batches of 500, 8 concurrent connections) next to the raw aiokafka
producer loop (a plain ``send()`` per message, then gather) on the same payloads,
the same broker and the same producer settings. The goal (issue 3): one ingest
process ≥ 2× the raw loop. Also measured: two ingest processes with the
connections split between them, as behind a load balancer.

The contenders take turns in rounds, so other work on the (shared) machine hits
them alike; the ratio rows give the lowest and highest per-round ratio too.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from bench.context import BenchContext, Row, process_cpu_seconds
from services.ingest.settings import IngestSettings
from shared.kafka import ensure_topics, make_producer
from tests.infra import BOOTSTRAP_KEY, ServiceProcess
from tests.ingest_helpers import settings_from

BATCH = 500
CLIENTS = 8
ACCOUNTS = 200
ROUNDS = 5

Payload = tuple[str, bytes, bytes]


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


class Connection:
    """One keep-alive HTTP/1.1 connection of the load generator.

    The benchmark's clients share the machine's two cores with the server and the
    broker; httpx spent ~3 µs of CPU per event (~1.5 ms per 500-event request),
    a third of the server's own cost. This plain client (a pre-built request head,
    the answer read by its Content-Length) spends a few µs per request. It checks
    every answer's status like httpx would.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, _, port = url.removeprefix("http://").partition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer)

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        lines = [f"POST {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = next(
            int(v)
            for k, _, v in (h.partition(":") for h in header_lines)
            if k.strip().lower() == "content-length"
        )
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def ingest_rate(urls: list[str], bodies: list[bytes]) -> float:
    """Events/s for posting every body, CLIENTS connections at a time (spread
    evenly over ``urls``: one URL per ingest process)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}", "Content-Type": "application/json"}
    failures: list[str] = []

    async def worker(conn: Connection) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            status, text = await conn.post("/v1/events", headers, body)
            if status != 202:
                failures.append(f"{status} {text[:200]!r}")

    conns = [await Connection.open(urls[i % len(urls)]) for i in range(CLIENTS)]
    try:
        # warm-up (connections, producer metadata), once per process
        for conn in conns[: len(urls)]:
            await conn.post("/v1/events", headers, bodies[0])
        start = time.perf_counter()
        await asyncio.gather(*(worker(conn) for conn in conns))
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            conn.close()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return len(bodies) * BATCH / elapsed


def raw_payloads(settings: IngestSettings, events: list[dict[str, Any]]) -> list[Payload]:
    """(topic, key, value) per event: what ingest would publish for it."""
    topics = settings.topics
    return [
        (
            topics.communication if e["type"] == "communication" else topics.product,
            e["account_id"].encode(),
            orjson.dumps(e),
        )
        for e in events
    ]


async def raw_rate(producer: AIOKafkaProducer, payloads: list[Payload]) -> float:
    """Messages/s for the plain aiokafka loop: send() per message, then gather."""
    start = time.perf_counter()
    futures = [await producer.send(t, v, key=k) for t, k, v in payloads]
    await asyncio.gather(*futures)
    return len(payloads) / (time.perf_counter() - start)


@dataclass
class Side:
    """What one contender did over all rounds."""

    events: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the server processes' CPU (ingest) or this process's (raw loop)
    rates: list[float] = field(default_factory=list)

    def add(self, events: int, rate: float, cpu: float) -> None:
        self.events += events
        self.seconds += events / rate
        self.cpu += cpu
        self.rates.append(rate)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def cpu_per_event(self) -> float:
        return self.cpu / self.events * 1e6


def servers_cpu(procs: list[ServiceProcess]) -> float:
    return sum(process_cpu_seconds(p.proc.pid) for p in procs if p.proc is not None)


async def run(ctx: BenchContext) -> list[Row]:
    n = 60_000 if ctx.quick else 500_000  # per contender
    rounds = 2 if ctx.quick else ROUNDS
    url_db = await ctx.database("ingest")
    env = ctx.env(url_db, ctx.topic_prefix(), HEALTHSCORE_LOG_LEVEL="WARNING")
    settings = settings_from(env)
    await ensure_topics(settings)
    procs = [ctx.service("ingest", env) for _ in range(2)]
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
    one, two = procs[:1], procs

    events = make_events(n, "ing")
    bodies = [orjson.dumps({"events": events[i : i + BATCH]}) for i in range(0, n, BATCH)]
    payloads = raw_payloads(settings, make_events(n, "raw"))
    per_round = -(-len(bodies) // rounds)
    producer = make_producer(settings)
    await producer.start()
    try:
        t, k, v = payloads[0]
        await producer.send_and_wait(t, v, key=k)  # warm-up: connection, metadata
        ingest1, ingest2, raw = Side(), Side(), Side()
        # Interleaved rounds, so that a burst of other work on this shared machine
        # hits every contender alike; each round's ratio is reported too.
        for r in range(rounds):
            chunk = bodies[r * per_round : (r + 1) * per_round]
            count = len(chunk) * BATCH
            for side, servers in ((ingest1, one), (ingest2, two)):
                cpu = servers_cpu(servers)
                rate = await ingest_rate([p.url for p in servers], chunk)
                side.add(count, rate, servers_cpu(servers) - cpu)
            part = payloads[r * per_round * BATCH : (r + 1) * per_round * BATCH]
            cpu = time.process_time()
            rate = await raw_rate(producer, part)
            raw.add(len(part), rate, time.process_time() - cpu)
    finally:
        await producer.stop()

    def ratio_row(side: Side, label: str, goal: str) -> Row:
        per = [a / b for a, b in zip(side.rates, raw.rates, strict=True)]
        note = f"{goal}; per round {min(per):.2f}–{max(per):.2f}"
        return Row("ingest", f"ingest ({label}) / raw loop", side.rate / raw.rate, "x", note)

    note = f"{n:,} events, {BATCH}/request, {CLIENTS} connections, {rounds} rounds"
    return [
        Row("ingest", "POST /v1/events, 1 ingest process", ingest1.rate, "events/s", note),
        Row("ingest", "POST /v1/events, 2 ingest processes", ingest2.rate, "events/s", note),
        Row("ingest", "raw aiokafka send()+gather loop", raw.rate, "msg/s", f"{n:,} messages"),
        ratio_row(ingest1, "1 process", "goal ≥ 2"),
        ratio_row(ingest2, "2 processes", "connections split evenly (a load balancer)"),
        Row("ingest", "ingest server CPU per event", ingest1.cpu_per_event(), "µs", "1 process"),
        Row("ingest", "raw loop CPU per message", raw.cpu_per_event(), "µs", "client process"),
    ]
