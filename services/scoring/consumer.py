"""The scoring consumer: batches from both event topics → one Postgres transaction
(state + consumed offsets) → Kafka commit.

Exactly-once effect: offsets live in Postgres next to the state they produced and
the consumer seeks to them on every assignment, so a batch redelivered after a
crash or rebalance is skipped. The Kafka commit is only a hint for tools.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.scoring.settings import ScoringSettings
from services.scoring.tables import consumer_offsets, events_seen
from shared.events import WireError, decode_event
from shared.kafka import make_consumer

log = logging.getLogger(__name__)


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, engine: AsyncEngine) -> None:
        self.consumer = consumer
        self.engine = engine

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass  # batches are applied atomically; nothing half-done to flush

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        stored = await load_offsets(self.engine, assigned)
        for tp in assigned:
            if tp in stored:
                self.consumer.seek(tp, stored[tp])


async def load_offsets(
    engine: AsyncEngine, tps: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(consumer_offsets).where(
                    consumer_offsets.c.topic.in_({tp.topic for tp in tps})
                )
            )
        ).all()
    wanted = set(tps)
    out = {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}
    return {tp: off for tp, off in out.items() if tp in wanted}


async def store_offsets(conn: AsyncConnection, offsets: dict[TopicPartition, int]) -> None:
    stmt = insert(consumer_offsets).values(
        [
            {"topic": tp.topic, "partition": tp.partition, "next_offset": off}
            for tp, off in offsets.items()
        ]
    )
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["topic", "partition"], set_={"next_offset": stmt.excluded.next_offset}
        )
    )


async def run_consumer(settings: ScoringSettings, engine: AsyncEngine, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set; finishes the batch in hand, then returns."""
    consumer = make_consumer(settings, settings.consumer_group)
    consumer.subscribe(list(settings.topics.events), listener=_SeekToStored(consumer, engine))
    await consumer.start()
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.batch_max_events)
            if not batches:
                continue
            rows = []
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                for msg in messages:
                    try:
                        ev = decode_event(msg.value)
                    except WireError as exc:
                        log.warning("undecodable event", extra={"reason": str(exc)})
                        continue
                    rows.append(
                        {
                            "event_id": ev.id,
                            "account_id": ev.account_id,
                            "type": ev.type,
                            "event_time": ev.timestamp,
                            "received_at": ev.received_at,
                        }
                    )
                offsets[tp] = messages[-1].offset + 1
            async with engine.begin() as conn:
                if rows:
                    await conn.execute(insert(events_seen).values(rows).on_conflict_do_nothing())
                await store_offsets(conn, offsets)
            await asyncio.wait_for(consumer.commit(offsets), 10)
    finally:
        try:
            await asyncio.wait_for(consumer.stop(), 10)
        except TimeoutError:
            log.warning("consumer did not stop within 10 s")
