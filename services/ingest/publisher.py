"""Kafka adapter: publish one request's messages in one batched round trip.

Messages are grouped by topic and partition — the partition computed from the
key (the account id) exactly like the producer's default murmur2 partitioner,
so one account's events stay on one partition and in order — and each group
goes out as one ``create_batch``/``send_batch``. :meth:`Publisher.publish`
returns only when the broker acknowledged every batch (``acks=all``, set in
``shared.kafka``); when that does not happen within ``timeout`` seconds it
raises :class:`PublishFailed` and the caller answers 503. Batches already handed
over may still be written later: a client retrying with the same ids is
deduplicated downstream (SPEC §8).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from services.ingest.metrics import PUBLISH_DURATION
from services.ingest.validation import Outgoing
from shared.events import Topic
from shared.settings import Topics


class PublishFailed(Exception):
    """The broker did not acknowledge every message in time."""


class Publisher:
    def __init__(self, producer: AIOKafkaProducer, topics: Topics, timeout: float) -> None:
        self.producer = producer
        self.timeout = timeout
        self._topic_names = {
            Topic.PRODUCT: topics.product,
            Topic.COMMUNICATION: topics.communication,
        }
        self._hashes: dict[bytes, int] = {}

    def _hash(self, key: bytes) -> int:
        h = self._hashes.get(key)
        if h is None:
            if len(self._hashes) > 200_000:
                self._hashes.clear()  # bounded memory
            h = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        if not messages:
            return
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                futures = await self._send(messages)
                await asyncio.gather(*futures)
        except (TimeoutError, Exception) as exc:
            raise PublishFailed(_describe(exc)) from exc
        PUBLISH_DURATION.observe(time.perf_counter() - start)

    async def _send(self, messages: Sequence[Outgoing]) -> list[Any]:
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        partitions: dict[str, list[int]] = {}
        for m in messages:
            topic = self._topic_names[m.topic]
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(await self.producer.partitions_for(topic))
            groups[(topic, parts[self._hash(m.key) % len(parts)])].append(m)
        futures = []
        for (topic, partition), group in groups.items():
            batch = self.producer.create_batch()
            for m in group:
                if batch.append(key=m.key, value=m.value, timestamp=None) is None:
                    # full: send it and start another for this partition
                    futures.append(
                        await self.producer.send_batch(batch, topic, partition=partition)
                    )
                    batch = self.producer.create_batch()
                    batch.append(key=m.key, value=m.value, timestamp=None)
            futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        return futures


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the broker did not acknowledge the events in time"
    return f"the broker did not acknowledge the events: {type(exc).__name__}: {exc}"
