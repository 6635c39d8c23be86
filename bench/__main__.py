"""Run every benchmark (or those named) and print one table; JSON in bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import pkgutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench.context import BenchContext, Row
from shared.embedded import TansuBroker
from tests.infra import start_infra, stop_infra

RESULTS = Path(__file__).parent / "results"


def discover() -> list[str]:
    import bench

    return sorted(
        m.name[len("bench_") :]
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )


def fresh_broker(ctx: BenchContext) -> None:
    """A new embedded broker for each benchmark: tansu keeps every message in memory
    and its CPU per request grows with what it holds (docs/performance.md, "Lag
    and latency in the soak"), so the millions of messages of one benchmark would
    slow the next."""
    old = ctx.infra.broker
    if old is None:  # a real Kafka (KAFKA_BOOTSTRAP_SERVERS): nothing to do
        return
    old.stop()
    new = TansuBroker(log_path=old.log_path).start()
    ctx.infra.broker, ctx.infra.bootstrap = new, new.bootstrap


async def run_all(names: list[str], ctx: BenchContext) -> list[Row]:
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        fresh_broker(ctx)
        print(f"── {name} …", flush=True)
        started = time.perf_counter()
        try:
            got = await module.run(ctx)
        except Exception as exc:  # one broken benchmark must not hide the others
            got = [Row(name, "error", float("nan"), "", repr(exc)[:120])]
        finally:
            ctx.stop_services()
        rows.extend(got)
        for r in got:
            print(f"   {r.metric:<48} {r.value:>14,.2f} {r.unit:<10} {r.note}", flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {discover()})")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--soak", action="store_true", help="10-minute sustained-load run")
    args = parser.parse_args()
    names = args.names or [n for n in discover() if n != "soak"]
    if args.soak:
        names = ["soak"]
    infra = start_infra()
    ctx = BenchContext(infra, quick=args.quick)
    try:
        rows = asyncio.run(_run(names, ctx))
    finally:
        stop_infra(infra)
    print()
    print(f"{'benchmark':<14} {'metric':<48} {'value':>14} unit")
    for r in rows:
        print(f"{r.bench:<14} {r.metric:<48} {r.value:>14,.2f} {r.unit} {r.note}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    print(f"\nresults: {out}")
    return 0


async def _run(names: list[str], ctx: BenchContext) -> list[Row]:
    try:
        return await run_all(names, ctx)
    finally:
        await ctx.close()


if __name__ == "__main__":
    sys.exit(main())
