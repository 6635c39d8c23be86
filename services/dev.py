"""``healthscore dev``: the whole stack on one machine (what ``make run`` calls).

Starts embedded PostgreSQL (data kept under ``--data-dir``) and the tansu broker
on free local ports — unless ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` are
set — creates the topics, runs the migrations, starts ingest, scoring and alerts
as separate processes, prints their URLs, and on Ctrl-C or SIGTERM stops every
process it started (the embedded PostgreSQL explicitly, since it would outlive us).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from shared.db import redacted_url
from shared.embedded import (
    DEFAULT_DATA_DIR,
    EmbeddedPostgres,
    TansuBroker,
    die_with_parent,
    port_open,
    postgres_data_dir,
)
from shared.kafka import ensure_topics
from shared.migrate import upgrade
from shared.settings import CommonSettings, KafkaProfile

SERVICES = ("ingest", "scoring", "alerts")


@dataclass(frozen=True)
class DevOptions:
    host: str = "127.0.0.1"
    ingest_port: int = 8000
    scoring_port: int = 8001
    alerts_port: int = 8002
    data_dir: str = DEFAULT_DATA_DIR
    demo: bool = False


def _say(msg: str) -> None:
    print(f"[healthscore] {msg}", flush=True)


def _bootstrap_key(data_dir: Path) -> str:
    """The all-scope key of the embedded stack, kept across runs so scripts keep working."""
    path = data_dir / "bootstrap_key"
    if path.exists():
        return path.read_text().strip()
    key = "hs_dev_" + secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def run_dev(opts: DevOptions) -> int:
    data_dir = Path(opts.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {"ingest": opts.ingest_port, "scoring": opts.scoring_port, "alerts": opts.alerts_port}
    busy = [f"{n}:{p}" for n, p in ports.items() if port_open("127.0.0.1", p)]
    if busy:
        _say(
            f"port(s) already in use: {', '.join(busy)} — stop what uses them or pass "
            "--ingest-port/--scoring-port/--alerts-port"
        )
        return 2

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    postgres: EmbeddedPostgres | None = None
    broker: TansuBroker | None = None
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = os.environ  # the services inherit what we set here
    try:
        if "DATABASE_URL" not in os.environ:
            # `healthscore keys …` and the other database commands find this server
            # through the same data folder (EmbeddedPostgres.running).
            _say(f"starting embedded PostgreSQL (data in {postgres_data_dir(data_dir)})")
            postgres = EmbeddedPostgres(postgres_data_dir(data_dir)).start()
            env["DATABASE_URL"] = postgres.url
        if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
            _say("starting the embedded Kafka-protocol broker (tansu, in memory)")
            broker = TansuBroker(log_path=data_dir / "broker.log").start()
            env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
            env["HEALTHSCORE_KAFKA_PROFILE"] = KafkaProfile.EMBEDDED.value
        env.setdefault("HEALTHSCORE_BOOTSTRAP_KEY", _bootstrap_key(data_dir))
        env.setdefault("HEALTHSCORE_DASHBOARD_URL", f"http://{opts.host}:{opts.scoring_port}")
        settings = CommonSettings()

        _say("creating topics and migrating the database")
        asyncio.run(ensure_topics(settings))
        upgrade(settings.database_url)

        for name in SERVICES:
            procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "services.cli",
                    name,
                    "--host",
                    opts.host,
                    "--port",
                    str(ports[name]),
                ],
                preexec_fn=die_with_parent,
            )
        if not _wait_ready(opts.host, ports, procs, lambda: stopping):
            return 1
        key = env["HEALTHSCORE_BOOTSTRAP_KEY"]
        base = f"http://{opts.host}"
        _say("ready:")
        print(f"  ingest   {base}:{ports['ingest']}   (POST /v1/events, docs at /docs)")
        print(f"  scoring  {base}:{ports['scoring']}   (dashboard and read API)")
        print(f"  alerts   {base}:{ports['alerts']}   (rules, webhooks, deliveries)")
        # Users point psql and other tools at it; `healthscore keys …` run from this
        # folder finds the embedded server without it.
        note = "   (embedded PostgreSQL, for psql and other tools)" if postgres else ""
        print(f"  DATABASE_URL={redacted_url(settings.database_url)}{note}")
        print(f"  API key (all scopes): {key}")
        print(
            f"  try:  curl -X POST {base}:{ports['ingest']}/v1/events "
            f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
            """-d '{"events":[{"type":"login","account_id":"acme","user_id":"u1"}]}'"""
        )
        print("  Ctrl-C stops everything.", flush=True)
        if opts.demo:
            threading.Thread(
                target=_demo,
                args=(
                    f"{base}:{ports['ingest']}",
                    f"{base}:{ports['scoring']}",
                    key,
                    lambda: stopping,
                ),
                daemon=True,
            ).start()
        else:
            print("  (tip: `make run DEMO=1` also generates demo traffic)", flush=True)
        while not stopping:
            dead = [n for n, p in procs.items() if p.poll() is not None]
            if dead:
                _say(f"{', '.join(dead)} exited; stopping the stack")
                return 1
            time.sleep(0.3)
        return 0
    finally:
        _say("stopping")
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for p in procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait()
        if broker:
            broker.stop()
        if postgres:
            postgres.stop()
        _say("stopped")


def _demo(ingest_url: str, scoring_url: str, key: str, stop: Callable[[], bool]) -> None:
    from services.demo import run_demo

    try:
        run_demo(ingest_url, key, live=True, say=_say, stop=stop, scoring_url=scoring_url)
    except Exception as exc:  # the stack keeps running; the demo is optional
        _say(f"demo traffic stopped: {exc}")


def _wait_ready(
    host: str,
    ports: dict[str, int],
    procs: dict[str, subprocess.Popen[bytes]],
    stopping: object,
    timeout: float = 60,
) -> bool:
    deadline = time.monotonic() + timeout
    pending = set(ports)
    with httpx.Client(timeout=2) as client:
        while pending and time.monotonic() < deadline:
            if callable(stopping) and stopping():
                return False
            for name in list(pending):
                if procs[name].poll() is not None:
                    _say(f"{name} exited with code {procs[name].returncode} during start-up")
                    return False
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"http://{host}:{ports[name]}/readyz").status_code == 200:
                        pending.discard(name)
            time.sleep(0.2)
    if pending:
        _say(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")
        return False
    return True
