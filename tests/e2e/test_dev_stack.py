"""`healthscore dev` (what `make run` calls): the embedded stack comes up, prints the
DATABASE_URL it uses, an event goes through, `healthscore keys create` run beside it
(no DATABASE_URL) makes a key the stack accepts, SIGTERM leaves no process and no
port behind, data is kept."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest

from shared.embedded import free_port, port_open
from tests.infra import ARTIFACTS, ROOT


def _start(data_dir: Path, ports: list[int], log: Path) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HEALTHSCORE_BOOTSTRAP_KEY")
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.cli",
            "dev",
            "--data-dir",
            str(data_dir),
            "--ingest-port",
            str(ports[0]),
            "--scoring-port",
            str(ports[1]),
            "--alerts-port",
            str(ports[2]),
        ],
        env=env,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )


def _healthscore(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it in another terminal, next to `make run`."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    script = Path(sys.executable).with_name("healthscore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    return subprocess.run(
        [*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _count_events(data_dir: Path) -> int | None:
    """Rows for event dev-1 in the embedded PostgreSQL of ``data_dir`` (None: not up)."""
    pg = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(data_dir) in " ".join(p.info["cmdline"] or []) and "-p" in (p.info["cmdline"] or [])
    ]
    if not pg:
        return None
    cmd = pg[0].info["cmdline"]
    url = f"postgresql://postgres@127.0.0.1:{cmd[cmd.index('-p') + 1]}/postgres"

    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FROM scoring_processed_events WHERE event_id = 'dev-1'"
                )
            )
        finally:
            await conn.close()

    return asyncio.run(count())


async def _fetch(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def _descendants_alive(data_dir: Path) -> list[str]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd:
            found.append(cmd)
    return found


@pytest.mark.slow
def test_dev_stack_runs_stops_cleanly_and_keeps_data() -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "dev-stack.log"
    # Not under tmp_path: as root the data folder must be reachable by the postgres
    # system user, and pytest's tmp folders are private to root.
    # Named as `make run` names it, in a folder standing for the checkout.
    checkout = Path(tempfile.mkdtemp(prefix="hs-dev-", dir="/tmp"))
    data_dir = checkout / ".healthscore"
    ports = [free_port(), free_port(), free_port()]
    offset = log.stat().st_size if log.exists() else 0  # the log is appended to

    def this_run() -> str:
        return log.read_bytes()[offset:].decode(errors="replace")

    proc = _start(data_dir, ports, log)
    try:
        assert _wait_for(lambda: all(_ready(p) for p in ports), 90), log.read_text()[-3000:]
        key = (data_dir / "bootstrap_key").read_text().strip()
        r = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/events",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "events": [{"id": "dev-1", "type": "login", "account_id": "acme", "user_id": "u1"}]
            },
        )
        assert r.status_code == 202, r.text
        assert _wait_for(lambda: _count_events(data_dir) == 1, 30), "event never stored"
        assert _wait_for(lambda: "DATABASE_URL=" in this_run(), 10), this_run()[-3000:]
        printed = this_run().partition("DATABASE_URL=")[2].split()[0]
        assert printed.startswith("postgresql://postgres@127.0.0.1:")
        # `healthscore keys create` finds the stack's database by itself...
        made = _healthscore(checkout, "keys", "create", "--name", "cli", "--scope", "ingest")
        assert made.returncode == 0, made.stderr
        new_key = made.stdout.split("key:")[1].split()[0]
        listed = _healthscore(checkout, "keys", "list")
        assert listed.returncode == 0 and " cli" in listed.stdout, listed.stderr
        # ...the very database it printed, and the stack accepts the new key
        assert asyncio.run(_fetch(printed, "SELECT count(*) FROM api_keys")) == 1
        r = httpx.post(
            f"http://127.0.0.1:{ports[0]}/v1/events",
            headers={"Authorization": f"Bearer {new_key}"},
            json={"events": [{"type": "login", "account_id": "acme", "user_id": "u2"}]},
        )
        assert r.status_code == 202, r.text
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert _wait_for(
        lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10
    )
    assert _descendants_alive(data_dir) == [], "embedded PostgreSQL must be stopped"
    assert not any(port_open("127.0.0.1", p) for p in ports), "ports must be freed"

    # A second run reuses the stored data: the event of the first run is still there.
    proc = _start(data_dir, ports, log)
    try:
        assert _wait_for(lambda: all(_ready(p) for p in ports), 90), log.read_text()[-3000:]
        assert _count_events(data_dir) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert _descendants_alive(data_dir) == []
    # with the stack stopped, the CLI says so in one line instead of a traceback
    gone = _healthscore(checkout, "keys", "list")
    assert gone.returncode == 2 and "has no running server" in gone.stderr, gone.stderr
    assert "Traceback" not in gone.stderr
    shutil.rmtree(checkout, ignore_errors=True)
