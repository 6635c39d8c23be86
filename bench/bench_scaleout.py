"""Scoring scale-out: the same events (12 partitions) drained by one scoring
process, then by two in one consumer group that has settled before the events
are produced; events/s from the first applied event to the last score committed,
read from the processes' own metrics."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta

from bench.context import BenchContext, Row, Steady
from bench.prom import scrape, total
from shared.events import EVENT_ADAPTER, encode_event, normalise
from shared.kafka import ensure_topics, make_producer, send_keyed
from shared.settings import CommonSettings
from tests.infra import ServiceProcess


def _payloads(n: int, accounts: int) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        acc = f"acct-{i % accounts}"
        ev = EVENT_ADAPTER.validate_python(
            {
                "id": f"s{i}",
                "type": "login" if i % 2 else "feature_used",
                "account_id": acc,
                "user_id": f"{acc}-u{i % 13}",
                "timestamp": now - timedelta(minutes=i % 600),
                **({} if i % 2 else {"feature": f"f{i % 7}"}),
            }
        )
        out.append((acc, encode_event(normalise(ev, received_at=now, new_id=str(uuid.uuid4())))))
    return out


async def _settled(procs: list[ServiceProcess], quiet: float = 5.0) -> None:
    """Until every process has its partitions and no rebalance happened for ``quiet``
    seconds (each assignment counts in ``healthscore_scoring_rebalances_total``)."""
    last, since = -1.0, time.monotonic()
    deadline = since + 120
    while time.monotonic() < deadline:
        counts = [total(scrape(p.url), "healthscore_scoring_rebalances_total") for p in procs]
        if min(counts) < 1 or sum(counts) != last:
            last, since = sum(counts), time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        await asyncio.sleep(0.25)
    raise RuntimeError("the scoring consumer group never settled")


async def _drain(ctx: BenchContext, consumers: int, payloads: list[tuple[str, bytes]]) -> float:
    url = await ctx.database(f"scaleout{consumers}")
    prefix = ctx.topic_prefix()
    env = ctx.env(url, prefix, HEALTHSCORE_TOPIC_PARTITIONS="12")
    settings = CommonSettings(
        _env_file=None,
        **{  # type: ignore[call-arg]
            "DATABASE_URL": url,
            "KAFKA_BOOTSTRAP_SERVERS": ctx.infra.bootstrap,
            "kafka_profile": ctx.infra.kafka_profile,
            "topic_prefix": prefix,
            "topic_partitions": 12,
        },
    )
    await ensure_topics(settings)
    # The processes join first (a group join or rebalance takes seconds on the
    # embedded broker, and is not throughput), then the events are produced, in
    # one batch per partition, much faster than they are drained.
    procs = [ctx.service("scoring", env) for _ in range(consumers)]
    for p in procs:
        p.start()
    await _settled(procs)
    producer = make_producer(settings)
    await producer.start()
    try:
        for i in range(0, len(payloads), 10_000):
            chunk = payloads[i : i + 10_000]
            await send_keyed(producer, settings.topics.product, [(k.encode(), v) for k, v in chunk])
    finally:
        await producer.stop()
    clock = Steady()
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        metrics = [scrape(p.url) for p in procs]
        applied = sum(
            total(m, "healthscore_scoring_events_total", outcome="applied") for m in metrics
        )  # not the duplicates: events a rebalance redelivered that dedup dropped
        scored = sum(total(m, "healthscore_scoring_event_to_score_seconds_count") for m in metrics)
        clock.mark(int(applied))
        if applied >= len(payloads) and scored >= applied:  # every score committed
            break
        await asyncio.sleep(0.25)
    for p in procs:
        p.stop()
    return clock.rate(len(payloads)) if clock.started is not None else float("nan")


async def run(ctx: BenchContext) -> list[Row]:
    n = 30_000 if ctx.quick else 100_000
    payloads = _payloads(n, 1_000)
    one = await _drain(ctx, 1, payloads)
    two = await _drain(ctx, 2, payloads)
    note = f"{n:,} events, 1k accounts, 12 partitions, produced once the group settled"
    return [
        Row("scaleout", "1 scoring process", one, "events/s", note),
        Row("scaleout", "2 scoring processes (one group)", two, "events/s", note),
        Row("scaleout", "speed-up 2 vs 1", two / one, "x", "2 cores shared with Postgres"),
    ]
