"""Alerts entrypoint: the admin API (HTTP thread) and, later, the health consumer and
webhook delivery workers (main loop)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.alerts.settings import AlertsSettings
from shared import db
from shared.auth import KeyStore
from shared.http import install_common
from shared.kafka import broker_reachable, ensure_topics
from shared.migrate import check_migrated


def create_app(settings: AlertsSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        app.state.engine = engine
        app.state.keys = KeyStore(engine, settings.bootstrap_key)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(title="Healthscore alerts", version="0.1.0", lifespan=lifespan)

    async def database_ok() -> bool:
        return await db.ping(app.state.engine)

    async def broker_ok() -> bool:
        return await broker_reachable(settings.kafka_bootstrap_servers)

    install_common(app, "alerts", {"database": database_ok, "broker": broker_ok})
    return app


def run(host: str, port: int) -> int:
    from shared.logs import setup_logging
    from shared.runner import serve

    settings = AlertsSettings()
    setup_logging("alerts", settings.log_level, settings.log_format)

    async def preflight() -> None:
        engine = db.create_engine(settings.database_url, pool_size=1)
        try:
            await check_migrated(engine)
        finally:
            await engine.dispose()
        await ensure_topics(settings)

    asyncio.run(preflight())
    return serve(create_app(settings), host, port)
