"""Alerts entrypoint: the admin API (HTTP thread) and, on the main loop, the health
consumer and the webhook delivery worker."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts.api import router
from services.alerts.settings import AlertsSettings
from shared import db
from shared.auth import KeyStore
from shared.http import MAX_BODY_BYTES, document_api, install_common
from shared.kafka import broker_reachable
from shared.runner import WorkerStatus


def create_app(settings: AlertsSettings, workers: WorkerStatus | None = None) -> FastAPI:
    from services.alerts.delivery import make_client

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        app.state.engine = engine
        app.state.settings = settings
        app.state.keys = KeyStore(engine, settings.bootstrap_key)
        app.state.http = make_client(settings)  # for POST /v1/webhooks/{id}/test
        try:
            yield
        finally:
            await app.state.http.aclose()
            await engine.dispose()

    app = FastAPI(
        title="Healthscore alerts",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    app.include_router(router)
    document_api(app)

    @app.middleware("http")
    async def refuse_nul(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # PostgreSQL text cannot hold NUL: refuse it in paths and queries up front
        # (bodies are checked by the request models) instead of failing with a 500.
        query = request.scope.get("query_string", b"").lower()
        if "\x00" in request.scope.get("path", "") or b"%00" in query:
            return JSONResponse({"detail": "NUL characters are not allowed in the URL"}, 400)
        return await call_next(request)

    async def database_ok() -> bool:
        return await db.ping(app.state.engine)

    async def broker_ok() -> bool:
        return await broker_reachable(settings.kafka_bootstrap_servers)

    async def workers_ok() -> bool:
        return workers is None or workers.alive()

    install_common(
        app, "alerts", {"database": database_ok, "broker": broker_ok, "workers": workers_ok}
    )
    return app


def run(host: str, port: int) -> int:
    from services.alerts.consumer import run_consumer
    from services.alerts.delivery import DeliveryWorker, make_client
    from services.alerts.store import RulesFileError, load_default_rules
    from shared.kafka import make_producer
    from shared.logs import setup_logging
    from shared.runner import preflight, serve

    settings = AlertsSettings()
    setup_logging("alerts", settings.log_level, settings.log_format)

    async def default_rules(engine: AsyncEngine) -> None:
        if settings.load_default_rules:
            await load_default_rules(engine, settings.rules_file)

    try:
        asyncio.run(preflight(settings, default_rules))
    except RulesFileError as exc:  # e.g. a rule on an unknown KPI in HEALTHSCORE_RULES_FILE
        print(f"healthscore alerts: HEALTHSCORE_RULES_FILE: {exc}", file=sys.stderr, flush=True)
        return 2

    # Both workers run on the main loop; the consumer wakes the delivery worker
    # through this event as soon as a batch with new outbox rows is committed.
    outbox_changed: asyncio.Event | None = None

    def wake_event() -> asyncio.Event:
        nonlocal outbox_changed
        if outbox_changed is None:
            outbox_changed = asyncio.Event()
        return outbox_changed

    async def consumer(stop: asyncio.Event) -> None:
        engine = db.create_engine(settings.database_url)
        producer = make_producer(settings)  # for the dead-letter topic
        await producer.start()
        try:
            await run_consumer(settings, engine, producer, stop, wake_event())
        finally:
            await asyncio.wait_for(producer.stop(), 10)
            await engine.dispose()

    async def delivery(stop: asyncio.Event) -> None:
        engine = db.create_engine(settings.database_url, pool_size=10, max_overflow=10)
        client = make_client(settings)
        try:
            await DeliveryWorker(settings, engine, client, wake_event()).run(stop)
        finally:
            await client.aclose()
            await engine.dispose()

    status = WorkerStatus()
    return serve(
        create_app(settings, status),
        host,
        port,
        [("health-consumer", consumer), ("webhook-delivery", delivery)],
        status,
    )
