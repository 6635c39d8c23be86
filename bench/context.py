"""What a benchmark gets: real infrastructure, isolated per benchmark."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from tests.infra import Infra, ServiceProcess, drop_database, new_database, service_env


@dataclass
class Row:
    """One line of the results table."""

    bench: str
    metric: str
    value: float
    unit: str
    note: str = ""


@dataclass
class BenchContext:
    infra: Infra
    quick: bool = False  # shorter runs (CI smoke), numbers less stable
    _dbs: list[str] = field(default_factory=list)
    _procs: list[ServiceProcess] = field(default_factory=list)

    async def database(self, label: str) -> str:
        url = await new_database(self.infra, f"bench_{label}")
        self._dbs.append(url)
        return url

    def topic_prefix(self) -> str:
        return "bench" + secrets.token_hex(3)

    def env(self, database_url: str, topic_prefix: str, **extra: str) -> dict[str, str]:
        return service_env(self.infra, database_url, topic_prefix, extra)

    def service(self, name: str, env: dict[str, Any]) -> ServiceProcess:
        proc = ServiceProcess(name, env)
        self._procs.append(proc)
        return proc

    def stop_services(self) -> None:
        """Stop the service processes started so far: one benchmark's services must
        not run on into the next (on the broker it replaced, they retry connecting
        and took CPU from the benchmarks after them)."""
        for p in self._procs:
            p.stop()
        self._procs.clear()

    async def close(self) -> None:
        self.stop_services()
        for url in self._dbs:
            await drop_database(self.infra, url)


class Steady:
    """Throughput once a consumer is running: from its first batch done (the group
    join before it takes ~1 s on the embedded broker, and is not throughput) to the
    last, counting only the events after that first batch. The consumer throughput
    rows of the scoring and scale-out benchmarks, ceilings included, are measured
    this way."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.first = 0
        self.last = 0.0

    def mark(self, done: int) -> None:
        """``done`` events finished so far."""
        now = time.perf_counter()
        if self.started is None and done > 0:
            self.started, self.first = now, done
        self.last = now

    def rate(self, total: int) -> float:
        assert self.started is not None, "no batch was ever done"
        return (total - self.first) / max(self.last - self.started, 1e-9)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(backend_pid: int) -> float | None:
    """CPU time used so far by the PostgreSQL server that ``backend_pid`` (a
    backend's ``pg_backend_pid()``) belongs to: its postmaster and every process
    it started, ended ones included. None when that server does not run on this
    machine (a ``DATABASE_URL`` elsewhere)."""
    try:
        postmaster = psutil.Process(backend_pid).parent()
        if postmaster is None or "postgres" not in postmaster.name():
            return None
        t = postmaster.cpu_times()
        used = t.user + t.system + t.children_user + t.children_system  # ended children
        for child in postmaster.children():
            with contextlib.suppress(psutil.Error):  # ended meanwhile: counted above next time
                c = child.cpu_times()
                used += c.user + c.system
        return float(used)
    except psutil.Error:
        return None
