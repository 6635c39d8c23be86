"""Scoring entrypoint: the read API (HTTP thread) and the consumer (main loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.scoring.consumer import run_consumer
from services.scoring.settings import ScoringSettings
from shared import db
from shared.auth import KeyStore
from shared.http import install_common
from shared.kafka import broker_reachable, ensure_topics
from shared.migrate import check_migrated
from shared.runner import WorkerStatus


def create_app(settings: ScoringSettings, workers: WorkerStatus | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        app.state.engine = engine
        app.state.keys = KeyStore(engine, settings.bootstrap_key)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="Healthscore scoring", version="0.1.0", lifespan=lifespan)

    async def database_ok() -> bool:
        return await db.ping(app.state.engine)

    async def broker_ok() -> bool:
        return await broker_reachable(settings.kafka_bootstrap_servers)

    async def consumer_ok() -> bool:
        return workers is None or workers.alive()

    install_common(
        app, "scoring", {"database": database_ok, "broker": broker_ok, "consumer": consumer_ok}
    )
    return app


def run(host: str, port: int) -> int:
    from shared.logs import setup_logging
    from shared.runner import serve

    settings = ScoringSettings()
    setup_logging("scoring", settings.log_level, settings.log_format)

    async def preflight() -> None:
        engine = db.create_engine(settings.database_url, pool_size=1)
        try:
            await check_migrated(engine)
        finally:
            await engine.dispose()
        await ensure_topics(settings)

    asyncio.run(preflight())

    async def consumer(stop: asyncio.Event) -> None:
        engine = db.create_engine(settings.database_url)
        try:
            await run_consumer(settings, engine, stop)
        finally:
            await engine.dispose()

    status = WorkerStatus()
    return serve(create_app(settings, status), host, port, [("consumer", consumer)], status)
