"""Ingest entrypoint: the FastAPI app that validates events and publishes them to Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from services.ingest.settings import IngestSettings
from shared import db
from shared.auth import KeyStore, Scope, require_scope
from shared.events import EVENT_LIST_ADAPTER, encode_event, normalise, time_problem
from shared.http import install_common
from shared.kafka import broker_reachable, ensure_topics, make_producer
from shared.migrate import check_migrated


def create_app(settings: IngestSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url)
        producer = make_producer(settings)
        await producer.start()
        app.state.engine = engine
        app.state.keys = KeyStore(engine, settings.bootstrap_key)
        app.state.producer = producer
        try:
            yield
        finally:
            await producer.stop()
            await engine.dispose()

    app = FastAPI(title="Healthscore ingest", version="0.1.0", lifespan=lifespan)

    async def database_ok() -> bool:
        return await db.ping(app.state.engine)

    async def broker_ok() -> bool:
        return await broker_reachable(settings.kafka_bootstrap_servers)

    install_common(app, "ingest", {"database": database_ok, "broker": broker_ok})

    @app.post("/v1/events", status_code=202, dependencies=[Depends(require_scope(Scope.INGEST))])
    async def post_events(request: Request) -> JSONResponse:
        body = await request.body()
        try:
            events = EVENT_LIST_ADAPTER.validate_json(_events_array(body))
        except ValidationError as exc:
            errors = [
                {
                    "index": e["loc"][0] if e["loc"] else None,
                    "field": ".".join(str(p) for p in e["loc"][2:]) or None,
                    "message": e["msg"],
                }
                for e in exc.errors()
            ]
            return JSONResponse({"errors": errors}, status_code=422)
        now = datetime.now(UTC)
        normal = [normalise(e, received_at=now, new_id=str(uuid.uuid4())) for e in events]
        problems = [
            {"index": i, "field": "timestamp", "message": p}
            for i, e in enumerate(normal)
            if (p := time_problem(e, now=now))
        ]
        if problems:
            return JSONResponse({"errors": problems}, status_code=422)
        producer = request.app.state.producer
        topics = settings.topics
        try:
            futures = [
                await producer.send(
                    topics.product if e.topic == "product" else topics.communication,
                    encode_event(e),
                    key=e.account_id.encode(),
                )
                for e in normal
            ]
            await asyncio.wait_for(asyncio.gather(*futures), settings.publish_timeout_seconds)
        except Exception as exc:
            raise HTTPException(
                503,
                f"the broker did not acknowledge the events: {exc}",
                headers={"Retry-After": "5"},
            ) from exc
        return JSONResponse({"accepted": len(normal)}, status_code=202)

    return app


def _events_array(body: bytes) -> bytes:
    import orjson

    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("events"), list):
        raise HTTPException(400, 'body must be {"events": [...]}')
    return orjson.dumps(doc["events"])


def run(host: str, port: int) -> int:
    from shared.logs import setup_logging
    from shared.runner import serve

    settings = IngestSettings()
    setup_logging("ingest", settings.log_level, settings.log_format)

    async def preflight() -> None:
        engine = db.create_engine(settings.database_url, pool_size=1)
        try:
            await check_migrated(engine)
        finally:
            await engine.dispose()
        await ensure_topics(settings)

    asyncio.run(preflight())
    return serve(create_app(settings), host, port)
