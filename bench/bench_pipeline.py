"""The whole pipeline at a steady rate: ingest acceptance → score committed latency
(p50/p95/p99 from scoring's event-to-score histogram), achieved rate, and the
peak RSS of each service, with the three services as separate processes."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import psutil

from bench.context import BenchContext, Row
from bench.prom import quantile, scrape, total
from tests.infra import BOOTSTRAP_KEY

RATE = 2_000  # events per second
BATCH = 100  # events per request: 20 requests/s
HIST = "healthscore_scoring_event_to_score_seconds"


def _events(seq: itertools.count[int], n: int, accounts: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for _ in range(n):
        i = next(seq)
        acc = f"acct-{i % accounts}"
        if i % 3:
            out.append(
                {"id": f"p{i}", "type": "login", "account_id": acc, "user_id": f"{acc}-u{i % 17}"}
            )
        else:
            out.append(
                {
                    "id": f"p{i}",
                    "type": "feature_used",
                    "account_id": acc,
                    "user_id": f"{acc}-u{i % 17}",
                    "feature": f"f{i % 9}",
                }
            )
    return out


async def run(ctx: BenchContext) -> list[Row]:
    seconds = 15 if ctx.quick else 60
    accounts = 1_000
    url = await ctx.database("pipeline")
    env = ctx.env(url, ctx.topic_prefix(), HEALTHSCORE_TOPIC_PARTITIONS="12")
    services = {n: ctx.service(n, env) for n in ("ingest", "scoring", "alerts")}
    for s in services.values():
        s.start()
    procs = {n: psutil.Process(s.proc.pid) for n, s in services.items() if s.proc}
    peak = dict.fromkeys(procs, 0)
    seq = itertools.count()
    sent = 0
    errors = 0
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    async with httpx.AsyncClient(timeout=30, headers=headers) as client:
        # warm-up: the consumer group joins and the first batches create accounts
        await client.post(
            f"{services['ingest'].url}/v1/events", json={"events": _events(seq, BATCH, accounts)}
        )
        await asyncio.sleep(5)
        before = scrape(services["scoring"].url)
        started = time.perf_counter()
        interval = BATCH / RATE
        tick = started
        pending: set[asyncio.Task[httpx.Response]] = set()
        while time.perf_counter() - started < seconds:
            body = {"events": _events(seq, BATCH, accounts)}
            pending.add(
                asyncio.create_task(client.post(f"{services['ingest'].url}/v1/events", json=body))
            )
            sent += BATCH
            tick += interval
            done = {t for t in pending if t.done()}
            for t in done:
                if t.result().status_code != 202:
                    errors += 1
            pending -= done
            for n, p in procs.items():
                peak[n] = max(peak[n], p.memory_info().rss)
            await asyncio.sleep(max(0.0, tick - time.perf_counter()))
        for t in asyncio.as_completed(pending):
            if (await t).status_code != 202:
                errors += 1
        elapsed = time.perf_counter() - started
        # drain: wait until scoring applied everything we sent
        deadline = time.monotonic() + 120
        applied = 0.0
        while time.monotonic() < deadline:
            now = scrape(services["scoring"].url)
            applied = total(now, "healthscore_scoring_events_total", outcome="applied") - total(
                before, "healthscore_scoring_events_total", outcome="applied"
            )
            for n, p in procs.items():
                peak[n] = max(peak[n], p.memory_info().rss)
            scored = total(now, f"{HIST}_count") - total(before, f"{HIST}_count")
            if applied >= sent and scored >= applied:  # every event's score committed
                break
            await asyncio.sleep(0.5)
    after = scrape(services["scoring"].url)
    # the histogram includes the warm-up batch; it is 100 of many thousands of events
    rows = [
        Row(
            "pipeline",
            "offered rate",
            sent / elapsed,
            "events/s",
            f"{RATE}/s target, {seconds}s, {accounts} accounts, {errors} failed requests",
        ),
        Row("pipeline", "applied by scoring", applied, "events", f"of {sent} sent"),
    ]
    for q in (0.5, 0.95, 0.99):
        rows.append(
            Row(
                "pipeline",
                f"event→score p{int(q * 100)}",
                quantile(after, HIST, q) * 1000,
                "ms",
                "target p99 < 500 ms" if q == 0.99 else "",
            )
        )
    for n, rss in peak.items():
        rows.append(
            Row(
                "pipeline",
                f"peak RSS {n}",
                rss / 2**20,
                "MiB",
                "target < 300 MiB" if n == "scoring" else "",
            )
        )
    return rows
