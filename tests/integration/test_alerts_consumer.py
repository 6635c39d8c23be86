"""The alerts health consumer on the real broker and a real PostgreSQL, in-process:
a message it cannot process goes to the dead-letter topic with the reason and the
consumer keeps going (SPEC §8), whether the snapshot fails validation (a NUL
character, a NaN KPI) or PostgreSQL refuses it; a lost database connection
dead-letters nothing, and the batch is applied once the database is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts import store
from services.alerts.consumer import run_consumer
from services.alerts.rules import Rule
from services.alerts.settings import AlertsSettings
from services.alerts.tables import alerts, consumer_offsets
from shared import db
from shared.kafka import REASON_HEADER, ensure_topics, make_producer
from tests.ingest_helpers import read_records
from tests.snapshots import snapshot

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> AlertsSettings:
    return AlertsSettings(
        _env_file=None,  # type: ignore[call-arg]
        DATABASE_URL=env["DATABASE_URL"],
        KAFKA_BOOTSTRAP_SERVERS=env["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_profile=env["HEALTHSCORE_KAFKA_PROFILE"],
        topic_prefix=env["HEALTHSCORE_TOPIC_PREFIX"],
        topic_partitions=1,
    )


@pytest.fixture(scope="module")
async def engine(settings: AlertsSettings) -> AsyncIterator[AsyncEngine]:
    e = db.create_engine(settings.database_url)
    async with e.begin() as conn:
        await store.upsert_rules(
            conn, [Rule(id="neg-nps", name="NPS below 0", kpi="nps", op="<", threshold=0)]
        )
    yield e
    await e.dispose()


@pytest.fixture(scope="module")
async def producer(settings: AlertsSettings) -> AsyncIterator[AIOKafkaProducer]:
    await ensure_topics(settings)
    p = make_producer(settings)
    await p.start()
    yield p
    await p.stop()


async def publish(settings: AlertsSettings, producer: AIOKafkaProducer, *raw: bytes) -> None:
    for value in raw:
        await producer.send_and_wait(settings.topics.health, value, key=b"k")


async def count_alerts(engine: AsyncEngine, account_id: str) -> int:
    async with engine.connect() as conn:
        q = select(func.count()).where(alerts.c.account_id == account_id)
        return int((await conn.execute(q)).scalar_one())


async def stored_offset(engine: AsyncEngine, settings: AlertsSettings) -> int:
    async with engine.connect() as conn:
        q = select(func.coalesce(func.sum(consumer_offsets.c.next_offset), 0)).where(
            consumer_offsets.c.topic == settings.topics.health
        )
        return int((await conn.execute(q)).scalar_one())


async def consume_until(
    settings: AlertsSettings,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    done: Callable[[], Awaitable[bool]],
    timeout: float = 60,
) -> None:
    """Run the consumer until ``done()``; it must still be running then (no crash)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_consumer(settings, engine, producer, stop))
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await done():
            assert not task.done(), "the consumer stopped"
            assert loop.time() < deadline, "timed out"
            await asyncio.sleep(0.2)
        assert not task.done(), "the consumer stopped"
    finally:
        stop.set()
        await task


async def dead_letters(settings: AlertsSettings, at_least: int = 0) -> list[tuple[bytes, str]]:
    records = await read_records(
        settings.kafka_bootstrap_servers, settings.topics.dlq, at_least=at_least
    )
    # by offset: a record the reader happens to fetch twice counts once
    by_offset = {r.offset: (r.value, dict(r.headers)[REASON_HEADER].decode()) for r in records}
    return [by_offset[o] for o in sorted(by_offset)]


def altered(account_id: str, /, **fields: Any) -> bytes:
    """A snapshot's JSON with ``fields`` replaced (bypassing validation)."""
    return orjson.dumps(orjson.loads(snapshot(account_id, 1, nps=-5).encode()) | fields)


POISON = [
    altered("nul-id", account_id="bad\u0000id"),
    altered("nul-name", account_name="Acme\u0000Inc"),
    snapshot("nan-kpi", 1, nps=-5).encode().replace(b'"nps":-5', b'"nps":NaN'),
    snapshot("inf-score", 1, nps=-5).encode().replace(b'"score":80.0', b'"score":1e999'),
]


async def test_snapshots_that_cannot_be_stored_are_dead_lettered_and_the_next_alerts(
    settings: AlertsSettings, engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    """Each of these decodes as JSON but could never be stored (PostgreSQL text and
    JSON hold no NUL, JSON no NaN): they used to fail the batch's transaction on
    every restart, so no later snapshot ever alerted."""
    poison = POISON
    assert b"NaN" in poison[2] and b"1e999" in poison[3]
    before = await stored_offset(engine, settings)
    await publish(settings, producer, *poison, snapshot("good-after-invalid", 1, nps=-5).encode())

    async def done() -> bool:
        return await stored_offset(engine, settings) == before + len(poison) + 1

    await consume_until(settings, engine, producer, done)
    assert await count_alerts(engine, "good-after-invalid") == 1
    # by message (the first batch after joining can be read twice: at least once)
    dead = list(dict(await dead_letters(settings, at_least=len(poison))).items())
    assert [v for v, _ in dead] == poison
    reasons = [r for _, r in dead]
    assert all(r.startswith("not a health snapshot") for r in reasons), reasons
    assert "NUL" in reasons[0] and "NUL" in reasons[1]
    assert "finite number" in reasons[2] and "finite number" in reasons[3]


async def test_a_snapshot_postgres_refuses_is_dead_lettered_with_the_reason(
    settings: AlertsSettings, engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    """Any other per-message database failure: the batch is applied again one snapshot
    at a time, the refused one is dead-lettered with PostgreSQL's words, the others
    (before and after it in the same batch) are recorded."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.account_id = 'db-refuses' THEN RAISE EXCEPTION 'no such account' "
                "USING ERRCODE = 'check_violation'; END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_one BEFORE INSERT ON alerts_accounts_seen "
                "FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )
        )
    try:
        before = await stored_offset(engine, settings)
        refused = snapshot("db-refuses", 1, nps=-5).encode()
        good = [snapshot(a, 1, nps=-5).encode() for a in ("db-before", "db-good-after")]
        await publish(settings, producer, good[0], refused, good[1])

        async def done() -> bool:
            return await stored_offset(engine, settings) == before + 3

        await consume_until(settings, engine, producer, done)
        assert await count_alerts(engine, "db-before") == 1
        assert await count_alerts(engine, "db-good-after") == 1
        assert await count_alerts(engine, "db-refuses") == 0
        dead = await dead_letters(settings, at_least=len(POISON) + 1)
        reasons = {r for v, r in dead if v == refused}
        assert not [v for v, _ in dead if v in good]
        [reason] = reasons  # (the batch may be read twice: it is dead-lettered alike)
        assert reason.startswith("the database refused the snapshot: no such account")
        assert "SQLSTATE 23514" in reason
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse_one ON alerts_accounts_seen"))
            await conn.execute(text("DROP FUNCTION refuse_one()"))


async def test_a_lost_database_connection_dead_letters_nothing(
    settings: AlertsSettings, engine: AsyncEngine, producer: AIOKafkaProducer
) -> None:
    """The connection dies in the middle of the batch (its server process is
    terminated): that is an outage, not bad data. The consumer stops with the error
    as before (the process is restarted), nothing is dead-lettered, no offset is
    stored; once the database is fine again the same snapshot alerts."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE FUNCTION drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NEW.account_id = 'db-down' THEN "
                "PERFORM pg_terminate_backend(pg_backend_pid()); END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER drop_connection BEFORE INSERT ON alerts_accounts_seen "
                "FOR EACH ROW EXECUTE FUNCTION drop_connection()"
            )
        )
    before = await stored_offset(engine, settings)
    down = snapshot("db-down", 1, nps=-5).encode()
    await publish(settings, producer, down)
    stop = asyncio.Event()
    with pytest.raises(Exception) as failed:
        await asyncio.wait_for(run_consumer(settings, engine, producer, stop), 60)
    assert not isinstance(failed.value, TimeoutError)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER drop_connection ON alerts_accounts_seen"))
        await conn.execute(text("DROP FUNCTION drop_connection()"))
    assert await stored_offset(engine, settings) == before
    assert await count_alerts(engine, "db-down") == 0

    async def done() -> bool:
        return await stored_offset(engine, settings) == before + 1

    await consume_until(settings, engine, producer, done)
    assert await count_alerts(engine, "db-down") == 1
    dead = await dead_letters(settings, at_least=len(POISON) + 1)
    assert len(dead) >= len(POISON) + 1  # the earlier tests' dead letters, all read
    assert down not in [v for v, _ in dead]
