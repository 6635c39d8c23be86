"""`make soak`: 10 minutes of sustained load through the three services, sampling
each service's RSS and scoring's consumer lag every 10 s. Growth shows as the
difference between the first and the last minute."""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
from pathlib import Path

import httpx
import psutil

from bench.bench_pipeline import _events
from bench.context import BenchContext, Row
from bench.prom import scrape, total
from tests.infra import BOOTSTRAP_KEY

RATE = 1_000  # events/s: sustainable by scoring on this machine, so lag must stay flat
BATCH = 100
SAMPLE_EVERY = 10.0
RESULTS = Path(__file__).parent / "results"


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
                samples.append(
                    {
                        "t": time.perf_counter() - started,
                        "lag": total(m, "healthscore_scoring_consumer_lag_events"),
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
    for key in ("lag", *(f"rss_{n}" for n in procs)):
        a = statistics.mean(s[key] for s in first)
        b = statistics.mean(s[key] for s in last)
        unit = "events" if key == "lag" else "MiB"
        rows.append(
            Row(
                "soak",
                f"{key}: first minute → last minute",
                b - a,
                unit,
                f"{a:,.1f} → {b:,.1f}; max {max(s[key] for s in samples):,.1f}",
            )
        )
    return rows
