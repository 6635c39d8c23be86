"""Test infrastructure: a real PostgreSQL and a real Kafka-protocol broker, started
once per test session; a fresh database and topic prefix per test module; helpers
to run the services as separate processes. Never a mock of either."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

from shared.embedded import EmbeddedPostgres, TansuBroker, free_port
from shared.migrate import upgrade
from shared.settings import KafkaProfile

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
BOOTSTRAP_KEY = "hs_test_" + "k" * 24


@dataclass
class Infra:
    """What the test session runs on."""

    admin_url: str  # a database we may CREATE DATABASE from
    bootstrap: str
    kafka_profile: KafkaProfile
    template_db: str = ""
    postgres: EmbeddedPostgres | None = None
    broker: TansuBroker | None = None

    def db_url(self, name: str) -> str:
        base, _, _ = self.admin_url.rpartition("/")
        return f"{base}/{name}"


def start_infra() -> Infra:
    tmp = Path(tempfile.mkdtemp(prefix="hs-test-", dir="/tmp"))
    postgres = None
    if os.environ.get("DATABASE_URL"):
        admin_url = os.environ["DATABASE_URL"]
    else:
        postgres = EmbeddedPostgres(tmp / "pgdata", fast=True).start()
        admin_url = postgres.url
    broker = None
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
        profile = KafkaProfile(os.environ.get("HEALTHSCORE_KAFKA_PROFILE", "kafka"))
    else:
        broker = TansuBroker(log_path=tmp / "broker.log").start()
        bootstrap = broker.bootstrap
        profile = KafkaProfile.EMBEDDED
    infra = Infra(admin_url, bootstrap, profile, postgres=postgres, broker=broker)
    infra.template_db = f"hs_template_{os.getpid()}"
    asyncio.run(_create_db(admin_url, infra.template_db))
    upgrade(infra.db_url(infra.template_db))
    return infra


def stop_infra(infra: Infra) -> None:
    with contextlib.suppress(Exception):
        asyncio.run(_drop_db(infra.admin_url, infra.template_db))
    if infra.broker:
        infra.broker.stop()
    if infra.postgres:
        infra.postgres.stop()


def _pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _create_db(admin_url: str, name: str, template: str | None = None) -> None:
    conn = await asyncpg.connect(_pg(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        tpl = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{tpl}')
    finally:
        await conn.close()


async def _drop_db(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(_pg(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def new_database(infra: Infra, label: str) -> str:
    """A fresh, migrated database (copied from the migrated template); returns its URL."""
    name = f"hs_{label[:40]}_{secrets.token_hex(3)}".lower().replace("-", "_").replace(".", "_")
    await _create_db(infra.admin_url, name, template=infra.template_db)
    return infra.db_url(name)


async def drop_database(infra: Infra, url: str) -> None:
    await _drop_db(infra.admin_url, url.rpartition("/")[2])


def service_env(
    infra: Infra, database_url: str, topic_prefix: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment for a service process (or a settings object) in a test."""
    env = {
        "DATABASE_URL": database_url,
        "KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap,
        "HEALTHSCORE_KAFKA_PROFILE": infra.kafka_profile.value,
        "HEALTHSCORE_TOPIC_PREFIX": topic_prefix,
        "HEALTHSCORE_TOPIC_PARTITIONS": "4",
        "HEALTHSCORE_BOOTSTRAP_KEY": BOOTSTRAP_KEY,
        "HEALTHSCORE_LOG_FORMAT": "json",
    }
    env.update(extra or {})
    return env


@dataclass
class ServiceProcess:
    """One service run as its own process, as in production (``healthscore NAME``)."""

    name: str
    env: dict[str, str]
    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ServiceProcess:
        self.port = self.port or free_port()
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = self.log_path or ARTIFACTS / f"{self.name}-{self.port}.log"
        out = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                self.name,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=os.environ | self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; log:\n"
                    + self.log_text()[-3000:]
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout}s; log:\n" + self.log_text()[-3000:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def running(*services: ServiceProcess) -> Iterator[tuple[ServiceProcess, ...]]:
    try:
        for s in services:
            s.start()
        yield services
    finally:
        for s in services:
            s.stop()
