"""`make soak`: 10 minutes of sustained load (1,000 events/s) through the three
services, sampling every 10 s each service's RSS, scoring's consumer lag, its
evaluator backlog (pending accounts) and the event→score p99 of the last 10 s.
Growth shows as the difference between the first and the last minute."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil

from bench.bench_pipeline import _events
from bench.context import BenchContext, Row
from bench.prom import delta, quantile, scrape, total
from tests.infra import BOOTSTRAP_KEY

RATE = 1_000  # events/s: sustained by this 2-core machine with 5,000 accounts (README)
HIST = "healthscore_scoring_event_to_score_seconds"
BATCH = 100
SAMPLE_EVERY = 10.0
RESULTS = Path(__file__).parent / "results"


def _known(values: Iterable[float]) -> list[float]:
    """Without NaN (a sampling window in which nothing was scored has no p99)."""
    return [v for v in values if not math.isnan(v)] or [math.nan]


def _mean(values: Iterable[float]) -> float:
    return statistics.mean(_known(values))


async def run(ctx: BenchContext) -> list[Row]:
    seconds = 120 if ctx.quick else 600
    url = await ctx.database("soak")
    env = ctx.env(url, ctx.topic_prefix(), HEALTHSCORE_TOPIC_PARTITIONS="12")
    services = {n: ctx.service(n, env) for n in ("ingest", "scoring", "alerts")}
    for s in services.values():
        s.start()
    procs = {n: psutil.Process(s.proc.pid) for n, s in services.items() if s.proc}
    samples: list[dict[str, float]] = []
    seq = itertools.count()
    sent = failed = 0
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        started = time.perf_counter()
        tick = next_sample = started
        pending: set[asyncio.Task[httpx.Response]] = set()
        previous: dict[str, list[tuple[dict[str, str], float]]] | None = None
        while time.perf_counter() - started < seconds:
            body = {"events": _events(seq, BATCH, 5_000)}
            pending.add(
                asyncio.create_task(client.post(f"{services['ingest'].url}/v1/events", json=body))
            )
            sent += BATCH
            done = {t for t in pending if t.done()}
            failed += sum(1 for t in done if t.result().status_code != 202)
            pending -= done
            if time.perf_counter() >= next_sample:
                m = scrape(services["scoring"].url)
                window = delta(m, previous) if previous else m
                previous = m
                samples.append(
                    {
                        "t": time.perf_counter() - started,
                        "lag": total(m, "healthscore_scoring_consumer_lag_events"),
                        "pending": total(m, "healthscore_scoring_pending_accounts"),
                        "p99_ms": 1000 * quantile(window, HIST, 0.99),
                        **{f"rss_{n}": p.memory_info().rss / 2**20 for n, p in procs.items()},
                    }
                )
                next_sample += SAMPLE_EVERY
            tick += BATCH / RATE
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        for t in asyncio.as_completed(pending):
            failed += (await t).status_code != 202
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"soak-samples-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps(samples, indent=1)
    )
    per_minute = max(1, int(60 / SAMPLE_EVERY))
    first, last = samples[:per_minute], samples[-per_minute:]
    rows = [
        Row(
            "soak",
            "duration / rate",
            seconds,
            "s",
            f"{RATE}/s, {sent:,} events, {failed} failed requests, {len(samples)} samples",
        )
    ]
    units = {"lag": "events", "pending": "accounts", "p99_ms": "ms"}
    for key in ("lag", "pending", "p99_ms", *(f"rss_{n}" for n in procs)):
        a = _mean(s[key] for s in first)
        b = _mean(s[key] for s in last)
        unit = units.get(key, "MiB")
        rows.append(
            Row(
                "soak",
                f"{key}: first minute → last minute",
                b - a,
                unit,
                f"{a:,.1f} → {b:,.1f}; max {max(_known(s[key] for s in samples)):,.1f}",
            )
        )
    return rows
