"""Helpers for the scoring integration tests: an in-process scoring consumer with a
controllable clock, on the real broker and the real database."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from unittest import mock

import orjson

from services.scoring import store
from services.scoring.clock import FixedClock
from services.scoring.consumer import new_producer, run_consumer
from services.scoring.score_model import ScoreModel, load_model
from services.scoring.settings import ScoringSettings
from shared.kafka import ensure_topics, make_consumer, make_producer


def settings_from(env: dict[str, str], **kw: Any) -> ScoringSettings:
    with mock.patch.dict(os.environ, env):
        return ScoringSettings(**kw)


def at(day: date, hour: int = 12) -> str:
    return datetime.combine(day, time(hour), tzinfo=UTC).isoformat()


class Stack:
    """Produces wire events like ingest does, runs the consumer, waits for it."""

    def __init__(self, settings: ScoringSettings, clock: FixedClock, model: ScoreModel) -> None:
        self.settings = settings
        self.clock = clock
        self.model = model
        self.produced = 0
        self.pool: Any = None
        self.seq = 0

    def event(self, type_: str, account: str, day: date, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        body = {
            "id": fields.pop("id", f"ev-{self.seq}"),
            "type": type_,
            "account_id": account,
            "timestamp": fields.pop("timestamp", at(day)),
            "received_at": datetime.now(UTC).isoformat(),
        }
        return body | fields

    async def send(self, events: list[dict[str, Any]], raw: list[bytes] | None = None) -> None:
        producer = make_producer(self.settings)
        await producer.start()
        try:
            for ev in events:
                topic = (
                    self.settings.topics.communication
                    if ev["type"] in ("communication", "contact_updated", "survey_response")
                    else self.settings.topics.product
                )
                await producer.send_and_wait(topic, orjson.dumps(ev), key=ev["account_id"].encode())
            for value in raw or []:
                await producer.send_and_wait(self.settings.topics.product, value, key=b"poison")
        finally:
            await producer.stop()
        self.produced += len(events) + len(raw or [])

    async def consumed(self) -> int:
        return int(
            await self.pool.fetchval(
                "SELECT COALESCE(sum(next_offset), 0) FROM scoring_consumer_offsets"
            )
        )

    async def wait_consumed(self, timeout: float = 60) -> None:
        """Until every produced message is consumed and every score reflects it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while await self.consumed() < self.produced or await store.pending_accounts(self.pool, 1):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"consumed {await self.consumed()} of {self.produced}")
            await asyncio.sleep(0.05)

    async def health(self, account: str) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "SELECT * FROM scoring_scores WHERE account_id = $1", account
        )
        assert row is not None, f"no score for {account}"
        out = dict(row)
        out["measures"] = store.unpack_measures(out["measures"], out["kpis"])
        return out


@contextlib.asynccontextmanager
async def running_stack(env: dict[str, str], now: datetime) -> AsyncIterator[Stack]:
    clock = FixedClock(now)
    settings = settings_from(env)
    model = load_model()
    await ensure_topics(settings)
    stack = Stack(settings, clock, model)
    stack.pool = await store.create_pool(settings.database_url, size=settings.worker_connections)
    producer = new_producer(settings)
    await producer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(settings, stack.pool, producer, model, clock, stop))
    try:
        yield stack
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()
        await stack.pool.close()


def days_ago(today: date, n: int) -> date:
    return today - timedelta(days=n)


async def read_topic(stack: Stack, topic: str, expect: int | None = None) -> list[Any]:
    """Every message of ``topic`` from its start: until ``expect`` were read, or
    (with none expected, or too few) until a second passes with nothing new."""
    consumer = make_consumer(
        stack.settings,
        f"reader-{topic}-{datetime.now().timestamp()}",
        topic,
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[Any] = []
    try:
        empty = 0
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                got.extend(msgs)
            empty = 0 if batch else empty + 1
            if (expect is not None and len(got) >= expect) or (got and empty >= 5):
                break
    finally:
        await consumer.stop()
    return got


@contextlib.asynccontextmanager
async def scoring_app(stack: Stack) -> AsyncIterator[Any]:
    """The scoring service's app, in-process, on the stack's pool and clock (its
    lifespan would open its own): for httpx's ASGITransport."""
    from services.scoring.app import create_app
    from shared import db
    from shared.auth import KeyStore
    from tests.infra import BOOTSTRAP_KEY

    app = create_app(stack.settings)
    app.state.engine = db.create_engine(stack.settings.database_url)
    app.state.keys = KeyStore(app.state.engine, BOOTSTRAP_KEY)
    app.state.pool = stack.pool
    app.state.clock = stack.clock
    try:
        yield app
    finally:
        await app.state.engine.dispose()
