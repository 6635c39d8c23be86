"""Process entrypoint shared by the three services.

The HTTP API runs in uvicorn on its own thread and event loop; background workers
(the scoring consumer and sweeper, the alerts consumer and delivery workers) run
on the main thread's loop. So a slow API query never delays a consumer heartbeat,
and a busy batch never delays ``/readyz`` — the consumer is not "inside the
FastAPI process loop". SIGTERM/SIGINT: workers finish their batch and stop, then
the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import db
from shared.kafka import ensure_topics
from shared.migrate import check_migrated
from shared.settings import CommonSettings

log = logging.getLogger(__name__)

Worker = Callable[[asyncio.Event], Awaitable[None]]


async def preflight(
    settings: CommonSettings,
    with_database: Callable[[AsyncEngine], Awaitable[None]] | None = None,
) -> None:
    """Before a service serves: the schema must be current (:class:`NotMigrated`
    otherwise), ``with_database`` runs any start-up step of its own, and the topics
    the service uses exist."""
    engine = db.create_engine(settings.database_url, pool_size=1)
    try:
        await check_migrated(engine)
        if with_database is not None:
            await with_database(engine)
    finally:
        await engine.dispose()
    await ensure_topics(settings)


@dataclass
class WorkerStatus:
    """Shared between the worker loop and the API thread: is every worker alive?"""

    running: dict[str, bool] = field(default_factory=dict)

    def alive(self) -> bool:
        return bool(self.running) and all(self.running.values())


def calm_garbage_collector(first_threshold: int = 50_000) -> None:
    """Make the cyclic GC cheap for these workloads (every service calls it once
    its start-up objects exist, through :func:`serve`).

    A request or a batch creates thousands of short-lived objects (models, dicts,
    rows) that reference counting frees; with the default thresholds the collector
    still runs hundreds of times per second and walks every long-lived object of
    the process (FastAPI, SQLAlchemy, aiokafka, pydantic schemas…): measured at
    ~25 % of ingest's CPU (docs/ingest.md, "Where the server's CPU goes") and ~30 %
    of scoring's with 100k accounts. Freezing what exists after start-up takes
    those objects out of collections, and a high first threshold makes
    collections rare.

    The first threshold counts container objects allocated minus those freed.
    Scoring passes :data:`BATCH_GC_THRESHOLD`: at 50,000 a collection fell while a
    batch (5,000 decoded events, ~50,000 live objects) was in hand and walked all
    of it, 30 collections of ~12 ms per 100,000 events; at 300,000 the batches in
    hand stay below it and collections come once their objects are gone (6 of
    ~0.3 ms). Cycles then wait longer for collection: in the 10-minute soak the
    alerts service, given 300,000 too, grew 135 → 177 MiB (50,000: 132 → 142), so
    the services without such batches keep 50,000.
    """
    import gc

    gc.freeze()
    gc.set_threshold(first_threshold, 20, 100)


BATCH_GC_THRESHOLD = 300_000  # scoring (see calm_garbage_collector)


def serve(
    app: FastAPI,
    host: str,
    port: int,
    workers: Sequence[tuple[str, Worker]] = (),
    status: WorkerStatus | None = None,
    shutdown_timeout: float = 30.0,
    gc_threshold: int = 50_000,
) -> int:
    """Run ``app`` and ``workers`` until SIGTERM/SIGINT; returns the exit code
    (1 when a worker died, so a supervisor restarts the process).
    ``gc_threshold``: see :func:`calm_garbage_collector`."""
    calm_garbage_collector(gc_threshold)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=10,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    status = status or WorkerStatus()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        thread = threading.Thread(target=server.run, name="http", daemon=True)
        thread.start()
        exit_code = 0

        async def run_worker(name: str, worker: Worker) -> None:
            nonlocal exit_code
            status.running[name] = True
            try:
                await worker(stop)
            except Exception:
                log.exception("worker died", extra={"worker": name})
                exit_code = 1
                stop.set()
            finally:
                status.running[name] = False

        tasks = [asyncio.create_task(run_worker(n, w), name=n) for n, w in workers]
        while not stop.is_set():
            if not thread.is_alive():  # e.g. the port was taken
                log.error("HTTP server stopped", extra={"port": port})
                exit_code = 1
                stop.set()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=shutdown_timeout)
            for t in pending:
                t.cancel()
        server.should_exit = True
        await asyncio.to_thread(thread.join, 15)
        return exit_code

    return asyncio.run(main())
