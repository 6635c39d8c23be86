"""Scoring entrypoint: the read API (HTTP thread) and two workers on the main loop:
the consumer (events → windows → scores) and the sweeper (time-driven re-evaluation)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.scoring import store
from services.scoring.api import router
from services.scoring.consumer import new_producer, run_consumer
from services.scoring.dashboard.data import ReadModelData
from services.scoring.dashboard.routes import dashboard_router, mount_static
from services.scoring.score_model import ModelError, load_model
from services.scoring.settings import ScoringSettings
from services.scoring.sweep import run_sweeper
from shared import db
from shared.auth import KeyStore
from shared.http import MAX_BODY_BYTES, document_api, install_common
from shared.kafka import broker_reachable
from shared.runner import BATCH_GC_THRESHOLD, WorkerStatus

log = logging.getLogger(__name__)


def create_app(settings: ScoringSettings, workers: WorkerStatus | None = None) -> FastAPI:
    bands = _bands(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        app.state.engine = engine
        app.state.keys = KeyStore(engine, settings.bootstrap_key)
        app.state.pool = await store.create_pool(settings.database_url, size=4)
        app.state.clock = settings.clock()
        http = httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False)
        app.state.dashboard = ReadModelData(
            app.state.pool,
            app.state.clock,
            bands,
            settings.alerts_url,
            settings.alerts_key or settings.bootstrap_key,
            http,
        )
        try:
            yield
        finally:
            await http.aclose()
            await app.state.pool.close()
            await engine.dispose()

    app = FastAPI(
        title="Healthscore scoring",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )

    async def database_ok() -> bool:
        return await db.ping(app.state.engine)

    async def broker_ok() -> bool:
        return await broker_reachable(settings.kafka_bootstrap_servers)

    async def consumer_ok() -> bool:
        return workers is None or workers.alive()

    install_common(
        app, "scoring", {"database": database_ok, "broker": broker_ok, "consumer": consumer_ok}
    )
    app.include_router(router)
    document_api(app)
    secret = (settings.session_secret or secrets.token_hex(32)).encode()
    app.include_router(dashboard_router(secret))
    mount_static(app)
    return app


def _bands(settings: ScoringSettings) -> tuple[float, float]:
    try:
        model = load_model(settings.score_model)
    except ModelError:
        return (70.0, 40.0)  # run() refuses to start with a bad model anyway
    return model.bands.green, model.bands.yellow


def run(host: str, port: int) -> int:
    from shared.logs import setup_logging
    from shared.runner import preflight, serve

    settings = ScoringSettings()
    setup_logging("scoring", settings.log_level, settings.log_format)
    try:
        model = load_model(settings.score_model)
    except ModelError as exc:  # refuse to start, saying why
        log.error(str(exc))
        print(str(exc), file=sys.stderr)
        return 2
    clock = settings.clock()

    asyncio.run(preflight(settings))

    async def workers(stop: asyncio.Event) -> None:
        """The consumer and the sweeper, sharing one pool and one producer; when
        either fails the other is stopped too (the process exits non-zero)."""
        pool = await store.create_pool(settings.database_url, size=settings.worker_connections)
        producer = new_producer(settings)
        try:
            await producer.start()

            async def guarded(work: Awaitable[None]) -> None:
                try:
                    await work
                except BaseException:
                    stop.set()
                    raise

            await asyncio.gather(
                guarded(run_consumer(settings, pool, producer, model, clock, stop)),
                guarded(run_sweeper(settings, pool, producer, model, clock, stop)),
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10)
            await pool.close()

    status = WorkerStatus()
    return serve(
        create_app(settings, status),
        host,
        port,
        [("scoring", workers)],
        status,
        gc_threshold=BATCH_GC_THRESHOLD,
    )
