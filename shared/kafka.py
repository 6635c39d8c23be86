"""Kafka producer, consumer and admin factories with settings that work on both
real Kafka and the embedded tansu broker (see EMBEDDED.md)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

from shared.settings import CommonSettings, KafkaProfile

log = logging.getLogger(__name__)


def producer_config(settings: CommonSettings) -> dict[str, Any]:
    embedded = settings.kafka_profile is KafkaProfile.EMBEDDED
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        # tansu cannot InitProducerId: idempotence only on real Kafka.
        "enable_idempotence": not embedded,
        # zstd: as compact as lz4 at aiokafka's fixed level 9 (LZ4-HC) and ~10x
        # cheaper to produce on JSON events (see docs/ingest.md, Benchmark).
        "compression_type": "zstd",
        "linger_ms": 2,
        "max_batch_size": 1024 * 1024,
        "request_timeout_ms": 10_000,
        "retry_backoff_ms": 100,
        "metadata_max_age_ms": 60_000,
    }


def make_producer(settings: CommonSettings, **overrides: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**(producer_config(settings) | overrides))


def consumer_config(settings: CommonSettings, group_id: str) -> dict[str, Any]:
    embedded = settings.kafka_profile is KafkaProfile.EMBEDDED
    cfg: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        # "latest" is wrong on tansu, and a new group must not skip accepted events anyway.
        "auto_offset_reset": "earliest",
        "max_poll_records": 5_000,
        "fetch_max_bytes": 16 * 1024 * 1024,
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "isolation_level": "read_uncommitted",
    }
    if embedded:
        # tansu holds JoinGroup for session_timeout/2 and does not wake long polls.
        cfg |= {
            "session_timeout_ms": 2_000,
            "heartbeat_interval_ms": 500,
            "fetch_max_wait_ms": 20,
            "rebalance_timeout_ms": 4_000,
        }
    else:
        cfg |= {
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 3_000,
            "fetch_max_wait_ms": 50,
        }
    return cfg


def make_consumer(
    settings: CommonSettings, group_id: str, *topics: str, **overrides: Any
) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **(consumer_config(settings, group_id) | overrides))


async def ensure_topics(
    settings: CommonSettings, topics: tuple[str, ...] | None = None, timeout: float = 30.0
) -> None:
    """Create the topics a service uses when they are missing (SPEC §11).

    Explicit creation matters on tansu, which would auto-create with 4 partitions.
    """
    names = topics or settings.topics.all()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10_000
    )
    async with asyncio.timeout(timeout):
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [n for n in names if n not in existing]
            if missing:
                # TopicAlreadyExists: another service created it first.
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(
                        [
                            NewTopic(
                                n,
                                num_partitions=settings.topic_partitions,
                                replication_factor=settings.topic_replication_factor,
                            )
                            for n in missing
                        ]
                    )
                log.info("created topics", extra={"topics": missing})
        finally:
            await admin.close()


async def broker_reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when a broker answers a metadata request within ``timeout`` seconds."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000))
    try:
        async with asyncio.timeout(timeout):
            await client.bootstrap()
        return True
    except Exception:  # any failure means "not ready"
        return False
    finally:
        await client.close()


@functools.lru_cache(maxsize=200_000)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF  # aiokafka's murmur2 is pure Python: cached


def partition_of(key: bytes, partitions: int) -> int:
    """The partition the producer's default partitioner picks for ``key`` (the Java
    client's murmur2), so records sent by partition stay with their key's others."""
    return _key_hash(key) % partitions


async def send_keyed(
    producer: AIOKafkaProducer, topic: str, records: Sequence[tuple[bytes, bytes]]
) -> None:
    """Publish ``(key, value)`` records with one batch per partition instead of one
    ``send()`` each (a tenth of the client CPU), in order per key; returns once the
    broker acknowledged all of them (raises otherwise)."""
    if not records:
        return
    partitions = sorted(await producer.partitions_for(topic))
    grouped: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in records:
        grouped[partitions[partition_of(key, len(partitions))]].append((key, value))
    acks = []
    for partition, items in grouped.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                acks.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"a record of {len(value)} bytes exceeds the batch size")
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*acks)


class BrokerMemoryCheck:
    """Notices that the broker forgot this consumer group's committed offsets.

    The embedded broker (tansu) keeps everything in memory: after a restart its
    topics are new, empty logs whose offsets start again at 0, and the group's
    commits are gone. Offsets stored in Postgres then point into a log that no
    longer exists, and a consumer still positioned on them would silently skip the
    first messages of the new log. Kafka-side commits are only hints here, but their
    *absence* for a partition that has a stored offset (or that this consumer
    committed) is the sign. Only on the embedded profile: real Kafka keeps commits
    (their expiry after days of inactivity is not a restart; topics keep their data).

    Who calls it: the consumers' rebalance listeners (:meth:`forgotten`, on every
    assignment) and their loops (:meth:`lost_state`, on each batch and when idle).
    Each check is one OffsetFetch round trip, bounded by ``timeout``.
    """

    def __init__(self, consumer: AIOKafkaConsumer, settings: CommonSettings, timeout: float = 5.0):
        self.consumer = consumer
        self.enabled = settings.kafka_profile is KafkaProfile.EMBEDDED
        self.timeout = timeout
        self._committed: set[TopicPartition] = set()

    def committed(self, tps: Iterable[TopicPartition]) -> None:
        """Record partitions this consumer committed successfully."""
        self._committed.update(tps)

    async def _forgot(self, tp: TopicPartition) -> bool:
        try:
            return await asyncio.wait_for(self.consumer.committed(tp), self.timeout) is None
        except Exception:  # a coordinator that cannot answer: rebuilding is harmless
            return True

    async def forgotten(self, stored: Iterable[TopicPartition]) -> list[TopicPartition]:
        """Of the partitions with offsets stored in Postgres, those the broker has no
        commit for: their stored offsets belong to a log the broker no longer has."""
        if not self.enabled:
            return []
        return [tp for tp in stored if await self._forgot(tp)]

    async def lost_state(self, tps: Iterable[TopicPartition] | None = None) -> bool:
        """True when the broker forgot a commit this consumer made (it restarted
        empty): the caller drops the batch in hand and rebuilds its consumer."""
        if not self.enabled:
            return False
        known = [tp for tp in (self._committed if tps is None else tps) if tp in self._committed]
        return bool(known) and await self._forgot(known[0])


async def ensure_topics_until(settings: CommonSettings, stop: asyncio.Event) -> None:
    """:func:`ensure_topics`, retried every second until it succeeds or ``stop``."""
    while not stop.is_set():
        try:
            await ensure_topics(settings, timeout=10)
            return
        except Exception as exc:  # broker not back yet
            log.warning("creating topics failed; retrying", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def consume_until_stopped(
    settings: CommonSettings,
    group_id: str,
    subscribe: Callable[[AIOKafkaConsumer, BrokerMemoryCheck], None],
    consume: Callable[[AIOKafkaConsumer, BrokerMemoryCheck], Awaitable[bool]],
    stop: asyncio.Event,
) -> None:
    """Run ``consume`` on a started consumer until ``stop``. When ``consume``
    returns True (the broker lost its state: :class:`BrokerMemoryCheck`), the
    consumer is stopped, the topics are created again with their configured
    partition counts, and a fresh consumer takes over — EMBEDDED.md: "after a broker
    restart, re-create topics and restart consumers"."""
    while not stop.is_set():
        consumer = make_consumer(settings, group_id)
        check = BrokerMemoryCheck(consumer, settings)
        subscribe(consumer, check)
        await consumer.start()
        try:
            rebuild = await consume(consumer, check)
        finally:
            try:
                await asyncio.wait_for(consumer.stop(), 10)
            except TimeoutError:
                log.warning("consumer did not stop within 10 s")
        if not rebuild:
            return
        log.warning(
            "the broker lost its state (restarted empty): re-creating topics, new consumer",
            extra={"group": group_id},
        )
        await ensure_topics_until(settings, stop)


REASON_HEADER = "x-healthscore-reason"


async def dead_letter(producer: AIOKafkaProducer, dlq_topic: str, msg: Any, reason: str) -> None:
    """Put a consumed message that cannot be processed on the dead-letter topic
    (SPEC §8), unchanged, with the reason and where it came from in headers; the
    caller then commits past it. Waits for the broker's acknowledgement."""
    headers = [
        (REASON_HEADER, reason[:1000].encode()),
        ("x-healthscore-topic", msg.topic.encode()),
        ("x-healthscore-partition", str(msg.partition).encode()),
        ("x-healthscore-offset", str(msg.offset).encode()),
    ]
    await producer.send_and_wait(dlq_topic, msg.value, key=msg.key, headers=headers)
