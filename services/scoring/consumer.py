"""The scoring consumer: batches from both event topics → one Postgres transaction
(event-id dedup, window deltas, evaluation of every touched account, consumed
offsets) → publish snapshots → Kafka commit.

Exactly-once effect: offsets live in Postgres next to the state they produced and
the consumer seeks to them on every assignment, so a batch redelivered after a
crash or rebalance is skipped; client resends are dropped by event id (7 days).
The Kafka commit is only a hint for tools.

Snapshots are published after the commit (at least once): each committed score
row carries ``revision`` and ``scoring_published`` the last revision published; a
snapshot not yet published (crash or broker failure in between) is republished
by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs published
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from services.scoring import store
from services.scoring.buckets import fold
from services.scoring.clock import Clock
from services.scoring.evaluation import Snapshot, evaluate_accounts
from services.scoring.metrics import (
    BATCH_DURATION,
    BATCH_SIZE,
    CONSUMER_LAG,
    EVENT_TO_SCORE,
    EVENTS,
    REBALANCES,
)
from services.scoring.score_model import ScoreModel
from services.scoring.settings import ScoringSettings
from shared.events import Event, WireError, decode_event
from shared.kafka import (
    BrokerMemoryCheck,
    consume_until_stopped,
    dead_letter,
    make_producer,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_CHECK_SECONDS = 5.0  # idle this long: ask whether the broker still knows us


async def in_transaction(
    pool: store.Pool,
    work: Callable[[store.Pg], Awaitable[T]],
    attempts: int = 5,
) -> T:
    """Run ``work`` in one transaction; retried on deadlock / serialization failure
    (only possible while two processes briefly hold the same accounts)."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as pg, pg.transaction():
                return await work(pg)
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, pool: store.Pool, check: BrokerMemoryCheck):
        self.consumer = consumer
        self.pool = pool
        self.check = check

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Batches are applied atomically with their offsets: nothing half-done to flush.
        for tp in revoked:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        REBALANCES.inc()
        stored = await load_offsets(self.pool, assigned)
        lost = await self.check.forgotten(stored)
        if lost:
            # Offsets of a log the (embedded) broker no longer has: read the new log
            # from its start; event-id dedup keeps anything read twice from counting.
            log.warning(
                "stored offsets belong to a log the broker lost; reading from the start",
                extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in lost]},
            )
            await forget_offsets(self.pool, lost)
        for tp in assigned:
            if tp in stored and tp not in lost:
                self.consumer.seek(tp, stored[tp])


async def load_offsets(
    pool: store.Pool,
    tps: Sequence[TopicPartition],
) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    rows = await pool.fetch(
        "SELECT topic, partition, next_offset FROM scoring_consumer_offsets"
        " WHERE topic = ANY($1::text[])",
        list({tp.topic for tp in tps}),
    )
    wanted = set(tps)
    out = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return {tp: off for tp, off in out.items() if tp in wanted}


async def forget_offsets(pool: store.Pool, tps: Sequence[TopicPartition]) -> None:
    await pool.execute(
        "DELETE FROM scoring_consumer_offsets"
        " WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
        [tp.topic for tp in tps],
        [tp.partition for tp in tps],
    )


class Fenced(Exception):
    """Another consumer already stored offsets past the start of this batch (it got
    these partitions in a rebalance and applied them): the batch must not apply."""


async def store_offsets(
    pg: store.Pg, offsets: dict[TopicPartition, int], first: dict[TopicPartition, int]
) -> None:
    """Store the next offsets, fenced: each partition's stored offset must not be past
    the first offset of this batch, or :class:`Fenced` is raised (the caller's
    transaction rolls back, so nothing of the batch is applied twice)."""
    tps = list(offsets)
    rows = await pg.fetch(
        """WITH x AS (
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[])
               AS x(topic, partition, next_offset, first_offset))
           INSERT INTO scoring_consumer_offsets AS t (topic, partition, next_offset)
           SELECT topic, partition, next_offset FROM x
           ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
           WHERE t.next_offset <= (SELECT x.first_offset FROM x
                                   WHERE x.topic = t.topic AND x.partition = t.partition)
           RETURNING t.topic""",
        [tp.topic for tp in tps],
        [tp.partition for tp in tps],
        [offsets[tp] for tp in tps],
        [first[tp] for tp in tps],
    )
    if len(rows) != len(tps):
        raise Fenced(f"offsets of {len(tps) - len(rows)} partition(s) moved past this batch")


def decode(raw: bytes | None) -> Event:
    """:func:`decode_event` plus what Postgres cannot store (NUL in text)."""
    if raw is not None and b"\\u0000" in raw:
        raise WireError("value contains a NUL character, which cannot be stored")
    return decode_event(raw)


class BatchProcessor:
    """Applies consumed batches; owns nothing but references (pool, producer, clock)."""

    def __init__(
        self,
        settings: ScoringSettings,
        pool: store.Pool,
        producer: AIOKafkaProducer,
        model: ScoreModel,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.model = model
        self.clock = clock
        self.published: dict[str, int] = {}  # sent, not yet recorded in Postgres

    async def flush_published(self) -> None:
        published, self.published = self.published, {}
        async with self.pool.acquire() as pg:
            await store.mark_published(pg, published)

    async def dead_letter(self, msg: Any, reason: str) -> None:
        await dead_letter(self.producer, self.settings.topics.dlq, msg, reason)

    async def process(self, batches: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
        """Apply one batch; returns the offsets to commit to Kafka."""
        started = time.perf_counter()
        events: list[tuple[Event, str]] = []
        offsets: dict[TopicPartition, int] = {}
        first: dict[TopicPartition, int] = {}
        size = 0
        for tp, messages in batches.items():
            for msg in messages:
                size += 1
                try:
                    events.append((decode(msg.value), tp.topic))
                except WireError as exc:
                    log.warning(
                        "dead-lettered a message",
                        extra={"topic": tp.topic, "offset": msg.offset, "reason": str(exc)},
                    )
                    await self.dead_letter(msg, str(exc))
                    EVENTS.labels(tp.topic, "dead_lettered").inc()
            if messages:
                offsets[tp] = messages[-1].offset + 1
                first[tp] = messages[0].offset
        # First occurrence of an id inside the batch wins; the table catches the rest.
        unique: dict[str, tuple[Event, str]] = {}
        in_batch_duplicates: Counter[str] = Counter()
        for ev, topic in events:
            assert ev.id is not None
            if ev.id in unique:
                in_batch_duplicates[topic] += 1
            else:
                unique[ev.id] = (ev, topic)
        for topic, n in in_batch_duplicates.items():
            EVENTS.labels(topic, "duplicate").inc(n)

        now = self.clock.now()

        async def work(pg: store.Pg) -> tuple[list[tuple[Event, str]], list[Snapshot]]:
            ids = list(unique)
            received = [unique[i][0].received_at for i in ids]
            await store.mark_published(pg, published)
            new = await store.claim_new_events(pg, ids, received)  # type: ignore[arg-type]
            fresh = [unique[i] for i in ids if i in new]
            deltas = fold([ev for ev, _ in fresh])
            await store.apply_deltas(pg, deltas)
            first_received: dict[str, datetime] = {}
            for ev, _ in fresh:
                assert ev.received_at is not None
                held = first_received.get(ev.account_id)
                if held is None or ev.received_at < held:
                    first_received[ev.account_id] = ev.received_at
            snapshots = await evaluate_accounts(
                pg,
                sorted(deltas.last_event_day),
                model=self.model,
                as_of=now.astimezone(UTC).date(),
                now=now,
                trigger="events",
                source_received_at=first_received,
            )
            if offsets:
                await store_offsets(pg, offsets, first)
            return fresh, snapshots

        published, self.published = self.published, {}
        try:
            fresh, snapshots = await in_transaction(self.pool, work)
        except BaseException:
            self.published = published | self.published
            raise
        committed = datetime.now(UTC)
        applied: Counter[str] = Counter()
        for ev, topic in fresh:
            applied[topic] += 1
            assert ev.received_at is not None
            EVENT_TO_SCORE.observe(max(0.0, (committed - ev.received_at).total_seconds()))
        duplicates: Counter[str] = Counter()
        fresh_ids = {ev.id for ev, _ in fresh}
        for ev_id, (_, topic) in unique.items():
            if ev_id not in fresh_ids:  # seen in an earlier batch (client resend)
                duplicates[topic] += 1
        for topic, n in applied.items():
            EVENTS.labels(topic, "applied").inc(n)
        for topic, n in duplicates.items():
            EVENTS.labels(topic, "duplicate").inc(n)
        # Recorded as published inside the next batch's transaction (saves a commit
        # per batch); if the process dies first, the sweeper republishes them.
        self.published.update(
            await send_snapshots(self.producer, self.settings.topics.health, snapshots)
        )
        BATCH_SIZE.observe(size)
        BATCH_DURATION.observe(time.perf_counter() - started)
        return offsets


async def send_snapshots(
    producer: AIOKafkaProducer, topic: str, snapshots: Sequence[Snapshot]
) -> dict[str, int]:
    """Publish committed snapshots; returns {account: revision} of those the broker
    acknowledged ({} on failure, logged: the sweeper republishes what stays
    unpublished)."""
    if not snapshots:
        return {}
    try:
        futures = [
            await producer.send(topic, s.encode(), key=s.account_id.encode()) for s in snapshots
        ]
        await asyncio.gather(*futures)
    except Exception:
        log.exception("publishing health snapshots failed; the sweeper will retry")
        return {}
    done: dict[str, int] = {}
    for s in snapshots:
        done[s.account_id] = max(done.get(s.account_id, 0), s.revision)
    return done


async def publish(
    pool: store.Pool,
    producer: AIOKafkaProducer,
    topic: str,
    snapshots: Sequence[Snapshot],
) -> None:
    """Publish committed snapshots, then record them as published (own statement)."""
    done = await send_snapshots(producer, topic, snapshots)
    if done:
        async with pool.acquire() as pg:
            await store.mark_published(pg, done)


async def update_lag(consumer: AIOKafkaConsumer) -> None:
    for tp in consumer.assignment():
        high = consumer.highwater(tp)  # end_offsets is wrong on tansu (EMBEDDED.md)
        if high is None:
            continue
        try:
            pos = await consumer.position(tp)
        except Exception:  # partition revoked meanwhile
            continue
        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, high - pos))


async def run_consumer(
    settings: ScoringSettings,
    pool: store.Pool,
    producer: AIOKafkaProducer,
    model: ScoreModel,
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """Consume until ``stop`` is set; finishes the batch in hand, then returns.

    Work in flight is bounded by ``batch_max_events``: one batch at a time, the
    next ``getmany`` only after the previous batch committed. A broker that lost
    its state (the embedded one, restarted) gets a fresh consumer
    (:func:`consume_until_stopped`)."""
    processor = BatchProcessor(settings, pool, producer, model, clock)

    def subscribe(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> None:
        consumer.subscribe(
            list(settings.topics.events), listener=_SeekToStored(consumer, pool, check)
        )

    async def consume(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> bool:
        idle_since = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.batch_max_events)
            if batches and await check.lost_state(batches):
                return True  # the batch is from a new log: drop it, rebuild
            if batches:
                idle_since = time.monotonic()
                try:
                    offsets = await processor.process(batches)
                except Fenced as exc:
                    # A rebalance moved these partitions meanwhile and their new owner
                    # applied them: resume from what is stored, apply nothing.
                    log.warning("batch fenced; re-seeking", extra={"reason": str(exc)})
                    stored = await load_offsets(pool, list(batches))
                    assigned = consumer.assignment()
                    for tp in batches:
                        if tp in assigned and tp in stored:
                            consumer.seek(tp, stored[tp])
                    continue
                try:
                    await asyncio.wait_for(consumer.commit(offsets), 10)
                    check.committed(offsets)
                except Exception as exc:  # offsets are safe in Postgres; commit is a hint
                    log.warning("kafka commit failed", extra={"error": str(exc)})
            else:
                if processor.published:  # idle: record what was published meanwhile
                    await processor.flush_published()
                if time.monotonic() - idle_since > IDLE_CHECK_SECONDS:
                    idle_since = time.monotonic()
                    if await check.lost_state():
                        return True
            await update_lag(consumer)
        if processor.published:
            await processor.flush_published()
        return False

    await consume_until_stopped(settings, settings.consumer_group, subscribe, consume, stop)


def new_producer(settings: ScoringSettings) -> AIOKafkaProducer:
    return make_producer(settings)
