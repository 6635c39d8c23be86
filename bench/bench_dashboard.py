"""The dashboard with 10,000 scored accounts: accounts-page latency (first page,
a filtered page, a page deep into the cursor chain) and the account page."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx

from bench.context import BenchContext, Row
from bench.prom import scrape, total
from tests.infra import BOOTSTRAP_KEY

ACCOUNTS = 10_000


def _timed(client: httpx.Client, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        out.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code)
    return out


async def run(ctx: BenchContext) -> list[Row]:
    url = await ctx.database("dashboard")
    env = ctx.env(url, ctx.topic_prefix())
    ingest, scoring = ctx.service("ingest", env), ctx.service("scoring", env)
    ingest.start()
    scoring.start()
    headers = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    events = []
    for i in range(ACCOUNTS):
        acc = f"acct-{i:05d}"
        events.append(
            {
                "id": f"a{i}",
                "type": "account_updated",
                "account_id": acc,
                "name": f"Account {i}",
                "seats_purchased": 10 + i % 50,
                "csm": f"csm-{i % 20}",
                "lifecycle_stage": "active",
            }
        )
        events.append({"id": f"l{i}", "type": "login", "account_id": acc, "user_id": "u1"})
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        for i in range(0, len(events), 2_000):
            r = await client.post(f"{ingest.url}/v1/events", json={"events": events[i : i + 2000]})
            assert r.status_code == 202, r.text
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if total(scrape(scoring.url), "healthscore_scoring_events_total", outcome="applied") >= len(
            events
        ):
            break
        await asyncio.sleep(1)
    n = 5 if ctx.quick else 20
    with httpx.Client(base_url=scoring.url, timeout=30) as client:
        client.post("/login", data={"key": BOOTSTRAP_KEY, "next": "/"})
        first = _timed(client, "/?sort=score", n)
        filtered = _timed(client, "/?sort=score&csm=csm-7&band=green", n)
        # walk 40 pages down the cursor chain (2,000 accounts in), then time that page
        page = client.get("/?sort=name")
        for _ in range(40):
            nxt = page.text.split('rel="next"')[0].rsplit('href="', 1)[-1].split('"')[0]
            page = client.get(nxt.replace("&amp;", "&"))
        deep_url = nxt.replace("&amp;", "&")
        deep = _timed(client, deep_url, n)
        account = _timed(client, "/accounts/acct-04242", n)
    note = f"{ACCOUNTS:,} accounts, 50 per page, {n} requests each"
    return [
        Row("dashboard", "accounts page p50", statistics.median(first), "ms", note),
        Row("dashboard", "accounts page, filtered p50", statistics.median(filtered), "ms", ""),
        Row("dashboard", "accounts page 41 (cursor) p50", statistics.median(deep), "ms", ""),
        Row("dashboard", "account page p50", statistics.median(account), "ms", ""),
        Row("dashboard", "accounts page max", max(first + filtered + deep), "ms", ""),
    ]
