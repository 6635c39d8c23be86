"""Helpers for the ingest tests: the app in-process on the real broker and
database, and a plain consumer that reads what ingest published."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings
from shared.kafka import ensure_topics
from tests.infra import BOOTSTRAP_KEY

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}


def settings_from(env: Mapping[str, str], **extra: str) -> IngestSettings:
    """Settings read from ``env`` exactly as a process would (env vars)."""
    saved = dict(os.environ)
    os.environ.update(env)
    os.environ.update(extra)
    try:
        return IngestSettings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


@asynccontextmanager
async def ingest_client(
    settings: IngestSettings,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The ingest app with its lifespan running, and a client talking to it."""
    await ensure_topics(settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield app, client


async def read_topic(
    bootstrap: str, topic: str, *, at_least: int = 0, idle: float = 1.0, timeout: float = 20.0
) -> list[dict[str, Any]]:
    """Every message on ``topic`` (value as JSON, plus ``_key``/``_partition``).

    Reads until ``at_least`` messages arrived and nothing new came for ``idle``
    seconds (or ``timeout``)."""
    out: list[dict[str, Any]] = []
    for r in await read_records(bootstrap, topic, at_least=at_least, idle=idle, timeout=timeout):
        value = orjson.loads(r.value)
        value["_key"] = r.key.decode() if r.key else None
        value["_partition"] = r.partition
        out.append(value)
    return out


async def read_records(
    bootstrap: str, topic: str, *, at_least: int = 0, idle: float = 1.0, timeout: float = 20.0
) -> list[Any]:
    """Every record on ``topic`` as aiokafka gives it (raw value, key, headers), read
    as :func:`read_topic` does."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    out: list[Any] = []
    try:
        parts = await consumer._client._wait_on_metadata(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            for records in batch.values():
                out.extend(records)
                if records:
                    last_new = loop.time()
            if len(out) >= at_least and loop.time() - last_new > idle:
                break
    finally:
        await consumer.stop()
    return out
