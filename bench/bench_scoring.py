"""Scoring throughput vs the bare ceiling, event→score latency at a steady rate,
cost per event with 1k vs 100k accounts, peak RSS.

- ceiling: consume the same messages → decode → aggregate per (account, day) →
  one unnest upsert + offsets per batch → commit (what any Postgres-backed
  consumer must do at least);
- scoring: the real scoring consumer (run in-process, same code as the service):
  dedup, every window table, set-based evaluation of every touched account,
  score + history upserts, offsets, snapshot publishing.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg
import orjson
import psutil

from bench.context import (
    BenchContext,
    Row,
    Steady,
    postgres_cpu_seconds,
    process_cpu_seconds,
)
from bench.prom import delta, quantile, scrape, total
from services.scoring import store
from services.scoring.buckets import fold
from services.scoring.clock import SystemClock
from services.scoring.consumer import new_producer, run_consumer
from services.scoring.evaluation import evaluate_accounts
from services.scoring.score_model import load_model
from services.scoring.settings import ScoringSettings
from shared.events import decode_event, event_day
from shared.kafka import ensure_topics, make_consumer, make_producer
from shared.runner import BATCH_GC_THRESHOLD, calm_garbage_collector

NOW = datetime.now(UTC)
ROUNDS = 3  # rounds of the throughput comparisons (see run)


def make_events(n: int, accounts: int, seed: int = 1, history_days: int = 30) -> list[bytes]:
    rnd = random.Random(seed)
    out = []
    received = datetime.now(UTC).isoformat()
    for i in range(n):
        a = f"a{rnd.randrange(accounts)}"
        ts = NOW - timedelta(days=rnd.randrange(history_days), seconds=rnd.randrange(3600))
        base = {
            "id": f"b{seed}-{i}",
            "account_id": a,
            "timestamp": ts.isoformat(),
            "received_at": received,
        }
        k = rnd.random()
        if k < 0.3:
            ev = base | {"type": "login", "user_id": f"u{rnd.randrange(20)}"}
        elif k < 0.55:
            ev = base | {
                "type": "feature_used",
                "user_id": f"u{rnd.randrange(20)}",
                "feature": rnd.choice(["dashboard", "report", "export", "x", "y"]),
            }
        elif k < 0.75:
            ev = base | {
                "type": "session",
                "user_id": f"u{rnd.randrange(20)}",
                "duration_seconds": rnd.randrange(10, 3000),
            }
        else:
            ev = base | {
                "type": "communication",
                "channel": "email",
                "direction": rnd.choice(["inbound", "outbound"]),
                "contact_id": f"c{rnd.randrange(5)}",
                "sentiment": 0.2,
            }
        out.append(orjson.dumps(ev))
    return out


async def produce(settings: ScoringSettings, values: list[bytes]) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for v in values:
            key = orjson.loads(v)["account_id"].encode()
            await producer.send(settings.topics.product, v, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def setup(ctx: BenchContext, label: str) -> ScoringSettings:
    url = await ctx.database(label)
    env = ctx.env(url, ctx.topic_prefix())
    with mock.patch.dict(os.environ, env):
        settings = ScoringSettings()
    await ensure_topics(settings)
    return settings


def _aggregate(agg: Counter[tuple[str, Any]], values: Iterable[bytes]) -> None:
    """Count decoded events per (account, day) into ``agg``."""
    for v in values:
        ev = decode_event(v)
        agg[(ev.account_id, event_day(ev))] += 1


async def _day_table(pg: Any, table: str) -> None:
    await pg.execute(
        f"CREATE TABLE {table} (account_id text, day date, events int,"
        " PRIMARY KEY (account_id, day))"
    )


async def _upsert_days(pg: Any, table: str, agg: Counter[tuple[str, Any]]) -> None:
    """The one batched upsert of the ceilings: unnest arrays, add the counts. Text
    and int arrays go as literals, as the scoring consumer sends them
    (``store.text_array``), so the ceiling is not slowed by an encoding it avoids."""
    keys = list(agg)
    await pg.execute(
        f"""INSERT INTO {table} AS t SELECT * FROM
            unnest($1::text::text[], $2::date[], $3::text::int[])
            ON CONFLICT (account_id, day) DO UPDATE
            SET events = t.events + EXCLUDED.events""",
        store.text_array([k[0] for k in keys]),
        [k[1] for k in keys],
        store.int_array([agg[k] for k in keys]),
    )


async def raw_consumer(settings: ScoringSettings, n: int) -> float:
    """Messages/s of a bare aiokafka consumer: fetch and touch every value, nothing else."""
    consumer = make_consumer(settings, "bench-raw", settings.topics.product)
    await consumer.start()
    done = 0
    clock = Steady()
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for msgs in batches.values():
                done += sum(1 for m in msgs if m.value)
            clock.mark(done)
        return clock.rate(n)
    finally:
        await consumer.stop()


async def raw_upsert(settings: ScoringSettings, values: list[bytes]) -> float:
    """Events/s of the batched Postgres upsert alone: the same events, decoded and
    aggregated per (account, day) beforehand (not timed), in batches of 5,000,
    one unnest upsert + commit each."""
    batches = []
    for i in range(0, len(values), 5000):
        agg: Counter[tuple[str, Any]] = Counter()
        _aggregate(agg, values[i : i + 5000])
        batches.append(agg)
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    await _day_table(pg, "bench_raw_upsert")
    started = time.perf_counter()
    try:
        for agg in batches:
            async with pg.transaction():
                await _upsert_days(pg, "bench_raw_upsert", agg)
        return len(values) / (time.perf_counter() - started)
    finally:
        await pg.close()


async def bare_ceiling(settings: ScoringSettings, n: int) -> float:
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    await _day_table(pg, "bench_bare")
    consumer = make_consumer(settings, "bench-bare", settings.topics.product)
    await consumer.start()
    done = 0
    clock = Steady()
    try:
        while done < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            agg: Counter[tuple[str, Any]] = Counter()
            offsets = {}
            for tp, msgs in batches.items():
                _aggregate(agg, (m.value for m in msgs))
                offsets[tp] = msgs[-1].offset + 1
                done += len(msgs)
            if not agg:
                continue
            async with pg.transaction():
                await _upsert_days(pg, "bench_bare", agg)
                await pg.execute(
                    """INSERT INTO scoring_consumer_offsets SELECT * FROM
                       unnest($1::text[], $2::int[], $3::bigint[])
                       ON CONFLICT (topic, partition) DO UPDATE
                       SET next_offset = EXCLUDED.next_offset""",
                    [tp.topic for tp in offsets],
                    [tp.partition for tp in offsets],
                    list(offsets.values()),
                )
            await consumer.commit(offsets)
            clock.mark(done)
        return clock.rate(n)
    finally:
        await consumer.stop()
        await pg.close()


async def scoring_run(
    settings: ScoringSettings, target: int, produce_fn: Any = None
) -> tuple[float, Any]:
    """Run the scoring consumer until ``target`` events (offsets) are applied and every
    account they touched is scored; events/s after its first batch (:class:`Steady`)."""
    pool = await store.create_pool(settings.database_url, size=settings.worker_connections)
    producer = new_producer(settings)
    await producer.start()
    stop = asyncio.Event()
    model = load_model()
    clock = Steady()
    applied = _applied()
    offsets = "SELECT COALESCE(sum(next_offset), 0) FROM scoring_consumer_offsets"
    before = int(await pool.fetchval(offsets))  # events applied by an earlier run
    task = asyncio.create_task(run_consumer(settings, pool, producer, model, SystemClock(), stop))
    try:
        if produce_fn is not None:
            await produce_fn()
        while not clock.started:  # in-process counter: poll it finely
            clock.mark(int(_applied() - applied))
            if task.done():
                task.result()
            await asyncio.sleep(0.002)
        while True:
            # In-process counters first; Postgres confirms only once they say done
            # (the pending query reads every stored account: polled every 20 ms,
            # it took ~15 % of PostgreSQL's CPU from the 100k-account run).
            if _applied() - applied >= target - before and not _pending():
                # The end is when the confirming queries start: what they find was
                # so by their snapshot (the pending query itself takes ~140 ms with
                # 63k accounts stored, and is not the consumer's time).
                clock.mark(target - before)
                got = await pool.fetchval(offsets)
                if got >= target and not await store.pending_accounts(pool, 1):
                    break  # every event applied and every touched account's score committed
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        return clock.rate(target - before), None
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
        await pool.close()


def _pending() -> float:
    """Accounts the in-process scoring consumer has waiting for evaluation."""
    from services.scoring.metrics import PENDING_ACCOUNTS

    return float(PENDING_ACCOUNTS._value.get())


def _applied() -> float:
    """Events the in-process scoring consumer has applied so far (both topics)."""
    from services.scoring.metrics import EVENTS

    return sum(
        s.value
        for metric in EVENTS.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("outcome") == "applied"
    )


async def vacuum(settings: ScoringSettings) -> None:
    """VACUUM ANALYZE the database of ``settings`` (what autovacuum would do next)."""
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    try:
        await pg.execute("VACUUM ANALYZE")
    finally:
        await pg.close()


async def stored_accounts(settings: ScoringSettings) -> int:
    """Accounts stored in the scoring database of ``settings``."""
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    try:
        return int(await pg.fetchval("SELECT count(*) FROM scoring_accounts"))
    finally:
        await pg.close()


async def sweep_poll_ms(settings: ScoringSettings) -> float:
    """What one sweeper poll costs when nothing is stale (every account of
    ``settings``' database evaluated just now): its stale-account query, ms."""
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    try:
        took = []
        for _ in range(5):
            now = datetime.now(UTC)
            async with pg.transaction():
                started = time.perf_counter()
                await store.stale_accounts(
                    pg,
                    today=now.date(),
                    stale_before=now - timedelta(seconds=settings.sweep_interval),
                    limit=settings.sweep_batch,
                )
                took.append(time.perf_counter() - started)
        return 1000 * sorted(took)[len(took) // 2]
    finally:
        await pg.close()


async def evaluation_us(settings: ScoringSettings, accounts: list[str]) -> float:
    """What one evaluation round costs per account (µs, median of 3), the round
    rolled back: window reads, KPIs, scores, explanations, the score writes."""
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    model = load_model()
    try:
        took = []
        for _ in range(3):
            now = datetime.now(UTC)
            tr = pg.transaction()
            await tr.start()
            started = time.perf_counter()
            done = await evaluate_accounts(
                pg, accounts, model=model, as_of=now.date(), now=now, trigger="sweep"
            )
            took.append(time.perf_counter() - started)
            await tr.rollback()
            assert len(done.written) == len(accounts)
        return 1e6 * sorted(took)[1] / len(accounts)
    finally:
        await pg.close()


LARGE_ACCOUNTS = (20, 300, 1_000)  # daily users of the large-account rows


async def large_account_evaluation_us(settings: ScoringSettings, users: int) -> float:
    """One evaluation of an account whose ``users`` users each log in on 70 % of
    the last 35 days (applied through the consumer's fold and upsert, then
    vacuumed), µs: the cost an account's size adds to each of its evaluations."""
    account = f"large{users}"
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    events = [
        decode_event(
            orjson.dumps(
                {
                    "id": f"{account}-{u}-{back}",
                    "type": "login",
                    "account_id": account,
                    "user_id": f"u{u}",
                    "timestamp": (today - timedelta(days=back)).isoformat(),
                    "received_at": today.isoformat(),
                }
            )
        )
        for back in range(35)
        for u in range(users)
        if (u + back) % 10 < 7
    ]
    pg = await asyncpg.connect(store.dsn(settings.database_url))
    try:
        async with pg.transaction():
            await store.apply_deltas(pg, store.window_statements(fold(events)))
    finally:
        await pg.close()
    await vacuum(settings)
    return await evaluation_us(settings, [account])


def _evaluations() -> float:
    """Event-triggered account evaluations committed so far in this process."""
    from services.scoring.metrics import ACCOUNTS_SCORED

    return float(ACCOUNTS_SCORED.labels("events")._value.get())


async def run(ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    calm_garbage_collector(BATCH_GC_THRESHOLD)  # as the scoring service runs
    n = 20_000 if ctx.quick else 100_000

    # Rounds of every throughput run: this machine's speed drifts by ±15 % from
    # minute to minute, so each comparison is made within a round (runs seconds
    # apart) and the round with the median ratio is the one reported.
    events = make_events(n, 1_000)
    year = make_events(n, 1_000, seed=3, history_days=365)
    many = make_events(n, 100_000, seed=2)
    active = make_events(n, 1_000, seed=4)
    rounds: list[dict[str, float]] = []
    for i in range(1 if ctx.quick else ROUNDS):
        r: dict[str, float] = {}
        # 1. the same data through the bare ceiling and through scoring (1k accounts)
        s1 = await setup(ctx, f"scoring_bare{i}")
        await produce(s1, events)
        if i == 0:
            raw = await raw_consumer(s1, n)
            rows.append(
                Row("scoring", "raw aiokafka consumer (fetch only)", raw, "msg/s", f"{n:,} events")
            )
            upsert = await raw_upsert(s1, events)
            rows.append(
                Row(
                    "scoring",
                    "raw batched upsert per (account, day) + commit",
                    upsert,
                    "events/s",
                    "pre-aggregated batches of 5,000; no Kafka",
                )
            )
        r["bare"] = await bare_ceiling(s1, n)
        s2 = await setup(ctx, f"scoring_full{i}")
        await produce(s2, events)
        evals = _evaluations()
        r["full"], _ = await scoring_run(s2, n)
        r["evals_1k"] = (_evaluations() - evals) / n
        # 2. 365 days of history instead of 30 (same event count, 1k accounts)
        s4 = await setup(ctx, f"scoring_year{i}")
        await produce(s4, year)
        r["year"], _ = await scoring_run(s4, n)
        # 3. the same event count spread over 100k accounts
        s3 = await setup(ctx, f"scoring_many{i}")
        await produce(s3, many)
        evals = _evaluations()
        r["wide"], _ = await scoring_run(s3, n)
        r["evals_100k"] = (_evaluations() - evals) / n
        # 3b. the same database (every account of the 100k run stored), events over
        # 1k of them: isolates what storage costs per event from what evaluations cost.
        # Vacuumed first: otherwise the run also pays for autovacuum cleaning up after
        # the 100k run just before it (PostgreSQL's CPU per event was 32–35 µs right
        # after it, 23 µs 40 s later), a cost of the run order, not of the accounts
        # stored.
        r["stored"] = await stored_accounts(s3)
        await vacuum(s3)
        await produce(s3, active)
        r["settled"], _ = await scoring_run(s3, 2 * n)
        if i == 0:
            r["poll_ms"] = await sweep_poll_ms(s3)
        # 3c. one evaluation round of the same 1k accounts (alike: ~100 events each)
        # in the 1k database and in the one with every account of the 100k run, both
        # vacuumed (as 3b, for the run just before)
        busy = [f"a{k}" for k in range(1_000)]
        await vacuum(s2)
        await vacuum(s3)
        r["eval_1k"] = await evaluation_us(s2, busy)
        r["eval_stored"] = await evaluation_us(s3, busy)
        rounds.append(r)

    def median(ratio: Callable[[dict[str, float]], float]) -> tuple[dict[str, float], str]:
        """The round with the median ``ratio``, and every round's ratio."""
        ordered = sorted(rounds, key=ratio)
        return ordered[len(ordered) // 2], ", ".join(f"{ratio(x):.2f}" for x in ordered)

    r, each = median(lambda x: x["full"] / x["bare"])
    rows.append(
        Row(
            "scoring",
            "bare ceiling (consume→aggregate→upsert)",
            r["bare"],
            "events/s",
            f"{n:,} events, 1k accounts; the round with the median ratio",
        )
    )
    rows.append(
        Row("scoring", "scoring consumer, every KPI (1k accounts)", r["full"], "events/s", "")
    )
    rows.append(
        Row(
            "scoring",
            "scoring ÷ bare ceiling",
            100 * r["full"] / r["bare"],
            "%",
            f"goal ≥ 40 %; {len(rounds)} rounds: {each}",
        )
    )
    for key, metric in (
        ("year", "scoring consumer (365 days of history)"),
        ("settled", "scoring consumer (100k run's accounts stored, 1k active)"),
        ("wide", "scoring consumer (100k accounts)"),
    ):
        r, each = median(lambda x, key=key: x["full"] / x[key])
        rows.append(
            Row(
                "scoring",
                metric,
                r[key],
                "events/s",
                f"{1e6 / r[key]:.1f} vs {1e6 / r['full']:.1f} µs/event at 1k accounts,"
                f" 30 days, same round ({r['full'] / r[key]:.2f}×; goal flat ± 25 %;"
                f" rounds: {each})",
            )
        )
    r, each = median(lambda x: x["eval_stored"] / x["eval_1k"])
    rows.append(
        Row(
            "scoring",
            "one evaluation, 1k vs 100k run's accounts stored",
            r["eval_stored"],
            "µs/account",
            f"vs {r['eval_1k']:.1f} with 1k stored ({r['eval_stored'] / r['eval_1k']:.2f}×;"
            f" rounds: {each}); a round of the same 1,000 accounts, rolled back",
        )
    )
    r = rounds[0]
    rows.append(
        Row(
            "scoring",
            "sweeper poll, nothing stale (100k run's accounts stored)",
            r["poll_ms"],
            "ms",
            f"{r['stored']:,.0f} accounts stored; median of 5 polls (the stale-account query)",
        )
    )
    rows.append(
        Row(
            "scoring",
            "account evaluations per event, 1k → 100k accounts",
            r["evals_100k"],
            "per event",
            f"vs {r['evals_1k']:.3f} at 1k: each event of the 100k run touches its own"
            f" account; {r['stored']:,.0f} accounts stored",
        )
    )

    # 4. large accounts: what an account's daily users add to each of its evaluations
    large = await setup(ctx, "large_accounts")
    cost = {u: await large_account_evaluation_us(large, u) for u in LARGE_ACCOUNTS}
    for u in LARGE_ACCOUNTS[1:]:
        rows.append(
            Row(
                "scoring",
                f"one evaluation of an account with {u:,} daily users",
                cost[u],
                "µs",
                f"vs {cost[LARGE_ACCOUNTS[0]]:.0f} with {LARGE_ACCOUNTS[0]} users; each user"
                " active on 70 % of 35 days; median of 3, rolled back",
            )
        )

    # 5. a steady 2,000 events/s through a real scoring process: latency, and the
    # cost per event with 1k vs 100k accounts (every account scored before)
    rate, seconds = 2_000, (3 if ctx.quick else 10)
    narrow = await steady_latency(ctx, rate, seconds)
    rows.append(
        Row(
            "scoring",
            "event accepted → score committed p50 / p95",
            narrow.p50 * 1000,
            "ms",
            f"p95 {narrow.p95 * 1000:,.0f} ms; {rate:,}/s for {seconds} s, 1k accounts",
        )
    )
    rows.append(
        Row(
            "scoring",
            "event accepted → score committed p99",
            narrow.p99 * 1000,
            "ms",
            f"{rate:,}/s for {seconds} s; goal < 500 ms",
        )
    )
    rows.append(
        Row(
            "scoring",
            "RSS of the scoring process after the run",
            narrow.rss,
            "MiB",
            "goal < 300 MB",
        )
    )
    wide = await steady_latency(ctx, rate, seconds, accounts=100_000)
    rows.append(
        Row(
            "scoring",
            "same rate over 100k accounts: event → score p99",
            wide.p99 * 1000,
            "ms",
            f"p50 {wide.p50 * 1000:,.0f}, p95 {wide.p95 * 1000:,.0f} ms",
        )
    )
    for name, run_ in (("1k", narrow), ("100k", wide)):
        pg = "n/a" if run_.postgres_cpu is None else f"{run_.postgres_cpu:,.0f}"
        rows.append(
            Row(
                "scoring",
                f"steady {rate:,}/s, {name} accounts: CPU per event, scoring process",
                run_.scoring_cpu,
                "µs",
                f"PostgreSQL {pg} µs; {run_.evaluations:.2f} evaluations per event",
            )
        )
    if narrow.postgres_cpu is not None and wide.postgres_cpu is not None:
        ratio = (wide.scoring_cpu + wide.postgres_cpu) / (narrow.scoring_cpu + narrow.postgres_cpu)
        rows.append(
            Row(
                "scoring",
                f"steady {rate:,}/s: CPU per event (scoring + PostgreSQL), 100k vs 1k accounts",
                ratio,
                "x",
                "the cost per event of a live stream, with every account scored before",
            )
        )
    return rows


@dataclass
class SteadyRun:
    """What a steady-rate run measured (:func:`steady_latency`)."""

    p50: float  # event → score committed, s
    p95: float
    p99: float
    rss: float  # MiB of the scoring process after the run
    evaluations: float  # per event (trigger "events")
    scoring_cpu: float  # µs per event, the scoring process
    postgres_cpu: float | None  # µs per event, the PostgreSQL server (None: not local)


async def steady_latency(
    ctx: BenchContext, rate: int, seconds: int, accounts: int = 1_000, **extra_env: str
) -> SteadyRun:
    """Events produced at a steady ``rate`` over ``accounts`` accounts into a real
    scoring process (its own CPU and event loop, as deployed), once it has scored
    every account (one login each, then ``VACUUM ANALYZE``: a live deployment's
    state, not a first run's), and event→score (from its histogram), its RSS and
    the CPU per event it and PostgreSQL used over the steady phase."""
    url = await ctx.database(f"scoring_latency_{accounts}")
    env = ctx.env(url, ctx.topic_prefix(), **extra_env)
    with mock.patch.dict(os.environ, env):
        settings = ScoringSettings()
    await ensure_topics(settings)
    svc = ctx.service("scoring", env)
    await asyncio.to_thread(svc.start)
    producer = make_producer(settings)
    await producer.start()
    pool = await store.create_pool(settings.database_url, size=1)
    hist = "healthscore_scoring_event_to_score_seconds"
    scored = "healthscore_scoring_accounts_scored_total"
    rnd = random.Random(5)

    def login(i: str, account: str) -> tuple[bytes, bytes]:
        now = datetime.now(UTC).isoformat()
        ev = {
            "id": i,
            "type": "login",
            "account_id": account,
            "user_id": f"u{rnd.randrange(20)}",
            "timestamp": now,
            "received_at": now,
        }
        return orjson.dumps(ev), account.encode()

    try:
        for k in range(accounts):
            value, key = login(f"w{k}", f"a{k}")
            await producer.send(settings.topics.product, value, key=key)
        await producer.flush()
        for _ in range(2400):  # the group join takes a few seconds on tansu
            if await pool.fetchval("SELECT count(*) FROM scoring_scores") >= accounts:
                break
            await asyncio.sleep(0.05)
        await vacuum(settings)
        assert svc.proc is not None
        backend = int(await pool.fetchval("SELECT pg_backend_pid()"))
        before = scrape(svc.url)
        scoring_before = process_cpu_seconds(svc.proc.pid)
        pg_before = postgres_cpu_seconds(backend)
        steady = rate * seconds
        t0 = time.perf_counter()
        for i in range(steady):
            delay = t0 + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            value, key = login(f"l{i}", f"a{rnd.randrange(accounts)}")
            await producer.send(settings.topics.product, value, key=key)
        await producer.flush()
        for _ in range(1200):
            if total(delta(scrape(svc.url), before), f"{hist}_count") >= steady:
                break  # every event's score committed
            await asyncio.sleep(0.1)
        pg_after = postgres_cpu_seconds(backend)
        got = delta(scrape(svc.url), before)
        scoring_cpu = process_cpu_seconds(svc.proc.pid) - scoring_before
        rss = psutil.Process(svc.proc.pid).memory_info().rss / 2**20
    finally:
        await pool.close()
        await producer.stop()
        svc.stop()
    p50, p95, p99 = (quantile(got, hist, q) for q in (0.5, 0.95, 0.99))
    return SteadyRun(
        p50,
        p95,
        p99,
        rss,
        evaluations=total(got, scored, trigger="events") / steady,
        scoring_cpu=scoring_cpu / steady * 1e6,
        postgres_cpu=None
        if pg_before is None or pg_after is None
        else (pg_after - pg_before) / steady * 1e6,
    )
