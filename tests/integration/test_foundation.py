"""Foundation pieces against the real PostgreSQL and broker."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from shared import db
from shared.auth import KeyStore, Scope, create_key, list_keys, revoke_key
from shared.kafka import ensure_topics, make_consumer, make_producer, send_keyed
from shared.migrate import NotMigrated, check_migrated, upgrade
from shared.settings import CommonSettings
from tests.infra import Infra, drop_database, new_database


async def test_migrate_is_idempotent_and_checked(infra: Infra) -> None:
    url = await new_database(infra, "migrate")
    try:
        engine = db.create_engine(url)
        await check_migrated(engine)  # the template is migrated
        await asyncio.to_thread(upgrade, url)  # a second run changes nothing and does not fail
        await check_migrated(engine)
        await engine.dispose()
    finally:
        await drop_database(infra, url)


async def test_unmigrated_database_is_refused_with_a_clear_message(infra: Infra) -> None:
    conn = await asyncpg.connect(infra.admin_url)
    await conn.execute('DROP DATABASE IF EXISTS "hs_empty" WITH (FORCE)')
    await conn.execute('CREATE DATABASE "hs_empty"')
    await conn.close()
    engine = db.create_engine(infra.db_url("hs_empty"))
    try:
        with pytest.raises(NotMigrated, match="healthscore migrate"):
            await check_migrated(engine)
    finally:
        await engine.dispose()
        await drop_database(infra, infra.db_url("hs_empty"))


async def test_keys_are_stored_hashed_scoped_and_revocable(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        key_id, raw = await create_key(engine, "ci", ["ingest", "read"])
        async with engine.connect() as conn:
            stored = (
                await conn.exec_driver_sql("SELECT key_hash, display_prefix FROM api_keys")
            ).all()
        assert all(raw not in row[0] for row in stored), "the raw key must never be stored"
        store = KeyStore(engine)
        key = await store.verify(raw)
        assert key is not None and key.scopes == {"ingest", "read"}
        assert await store.verify(raw + "x") is None
        assert await revoke_key(engine, key_id)
        assert await KeyStore(engine).verify(raw) is None  # a fresh cache sees the revocation
        listed = await list_keys(engine)
        assert [k["revoked_at"] is not None for k in listed] == [True]
        assert not await revoke_key(engine, key_id)
        with pytest.raises(ValueError):
            await create_key(engine, "bad", ["superuser"])
    finally:
        await engine.dispose()


async def test_bootstrap_key_has_every_scope(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        key = await KeyStore(engine, "b" * 20).verify("b" * 20)
        assert key is not None and key.scopes == set(Scope)
    finally:
        await engine.dispose()


async def test_ensure_topics_creates_missing_topics_with_partitions(
    infra: Infra, monkeyenv: dict[str, str]
) -> None:
    settings = CommonSettings()
    await ensure_topics(settings)
    await ensure_topics(settings)  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(settings.topics.all()))
    finally:
        await admin.close()
    partitions = {t["topic"]: len(t["partitions"]) for t in described}
    assert partitions == {name: 4 for name in settings.topics.all()}


async def test_database_ahead_of_this_release_is_accepted(infra: Infra) -> None:
    """Rolling upgrade: a newer release migrated; old pods must keep starting."""
    url = await new_database(infra, "ahead")
    engine = db.create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO alembic_version (version_num) VALUES ('future_0001')"
            )
        await check_migrated(engine)  # no NotMigrated
        async with engine.begin() as conn:
            await conn.exec_driver_sql("DELETE FROM alembic_version")
        with pytest.raises(NotMigrated):
            await check_migrated(engine)
    finally:
        await engine.dispose()
        await drop_database(infra, url)


async def test_send_keyed_puts_each_key_where_the_default_partitioner_does(
    monkeyenv: dict[str, str],
) -> None:
    """Records sent in per-partition batches land on the partition a plain
    ``send(key=…)`` picks, in order per key, so one account stays on one partition."""
    settings = CommonSettings()
    await ensure_topics(settings)
    topic = settings.topics.health
    producer = make_producer(settings)
    await producer.start()
    keys = [f"acct-{i}".encode() for i in range(60)]
    try:
        plain = {k: (await producer.send_and_wait(topic, b"plain", key=k)).partition for k in keys}
        await send_keyed(
            producer, topic, [(k, f"batched-{n}".encode()) for n in range(3) for k in keys]
        )
    finally:
        await producer.stop()
    consumer = make_consumer(settings, "send-keyed-check", topic)
    await consumer.start()
    seen: dict[bytes, list[tuple[int, bytes]]] = {}
    try:
        async with asyncio.timeout(30):
            while sum(len(v) for v in seen.values()) < 4 * len(keys):
                for tp, msgs in (await consumer.getmany(timeout_ms=200)).items():
                    for m in msgs:
                        seen.setdefault(m.key, []).append((tp.partition, m.value))
    finally:
        await consumer.stop()
    assert len(set(plain.values())) > 1  # the keys really spread over partitions
    for k in keys:
        assert {p for p, _ in seen[k]} == {plain[k]}
        assert [v for _, v in seen[k]] == [b"plain", b"batched-0", b"batched-1", b"batched-2"]
