"""Kafka producer, consumer and admin factories with settings that work on both
real Kafka and the embedded tansu broker (see EMBEDDED.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

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
