"""Kafka adapter: publish one request's messages in one batched round trip.

Messages are grouped by topic and partition — the partition computed from the
key (the account id) exactly like the producer's default murmur2 partitioner,
so one account's events stay on one partition and in order — and appended to
that partition's open batch (``create_batch``/``send_batch``), never one
``send()`` per message. :meth:`Publisher.publish`
returns only when the broker acknowledged every batch (``acks=all``, set in
``shared.kafka``); when that does not happen within ``timeout`` seconds it
raises :class:`PublishFailed` and the caller answers 503. Batches already handed
over may still be written later: a client retrying with the same ids is
deduplicated downstream (SPEC §8).
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer

from services.ingest.metrics import PUBLISH_DURATION
from services.ingest.validation import Outgoing
from shared.events import Topic
from shared.kafka import partition_of
from shared.settings import Topics

MAX_BACKLOG_BATCHES = 4  # full batches (≤ 1 MiB each) waiting per partition: bounded memory


class PublishFailed(Exception):
    """The broker did not acknowledge every message in time."""


@dataclass(eq=False)
class _Batch:
    """One batch being filled for a partition; ``acked`` resolves when Kafka
    acknowledged it (or fails with the reason)."""

    builder: Any
    acked: asyncio.Future[None]


@dataclass(eq=False)
class _Partition:
    open: _Batch | None = None
    full: deque[_Batch] = field(default_factory=deque)
    flusher: asyncio.Task[None] | None = None


class Publisher:
    """Group commit per partition: messages of concurrent requests for the same
    partition share a batch while the previous batch of that partition is in
    flight, so a busy partition sends fewer, larger batches. aiokafka keeps one
    batch per partition in flight; each partition has one flusher task handing
    batches over in order."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        timeout: float,
        ensure_topics: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.producer = producer
        self.timeout = timeout
        # After a failure the broker may have restarted empty (the embedded one keeps
        # topics in memory): create the topics again, with their configured partition
        # counts, before the next publish would let the broker auto-create them.
        self.ensure_topics = ensure_topics
        self._recheck_topics = False
        self._topic_names = {
            Topic.PRODUCT: topics.product,
            Topic.COMMUNICATION: topics.communication,
        }
        self._partitions: dict[tuple[str, int], _Partition] = defaultdict(_Partition)

    async def publish(self, messages: Sequence[Outgoing]) -> None:
        """Return once Kafka acknowledged every message (acks=all); raise
        :class:`PublishFailed` when that does not happen within ``timeout``."""
        if not messages:
            return
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                if self._recheck_topics and self.ensure_topics is not None:
                    await self.ensure_topics()
                    self._recheck_topics = False
                acks = await self._enqueue(messages)
                await asyncio.gather(*acks)
        except PublishFailed:
            self._recheck_topics = True
            raise
        except (TimeoutError, Exception) as exc:
            self._recheck_topics = True
            raise PublishFailed(_describe(exc)) from exc
        PUBLISH_DURATION.observe(time.perf_counter() - start)

    async def _enqueue(self, messages: Sequence[Outgoing]) -> set[asyncio.Future[None]]:
        groups: dict[tuple[str, int], list[Outgoing]] = defaultdict(list)
        partitions: dict[str, list[int]] = {}
        for m in messages:
            topic = self._topic_names[m.topic]
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(await self.producer.partitions_for(topic))
            groups[(topic, parts[partition_of(m.key, len(parts))])].append(m)
        for tp in groups:
            part = self._partitions.get(tp)
            if part is not None and len(part.full) >= MAX_BACKLOG_BATCHES:
                # the broker is not taking batches: refuse now rather than queue
                # without bound (all or nothing: nothing of this request queued)
                raise PublishFailed("the broker is not keeping up; too many batches waiting")
        acks: set[asyncio.Future[None]] = set()
        loop = asyncio.get_running_loop()
        for tp, group in groups.items():
            part = self._partitions[tp]
            batch = part.open
            if batch is None:
                batch = part.open = _Batch(self.producer.create_batch(), loop.create_future())
            for m in group:
                if batch.builder.append(key=m.key, value=m.value, timestamp=None) is None:
                    acks.add(batch.acked)  # full: queue it, continue in a new one
                    part.full.append(batch)
                    batch = part.open = _Batch(self.producer.create_batch(), loop.create_future())
                    batch.builder.append(key=m.key, value=m.value, timestamp=None)
            acks.add(batch.acked)
            if part.flusher is None:
                part.flusher = asyncio.create_task(self._flush(tp, part))
        return acks

    async def _flush(self, tp: tuple[str, int], part: _Partition) -> None:
        topic, partition = tp
        try:
            while part.full or part.open is not None:
                if part.full:
                    batch = part.full.popleft()
                else:
                    assert part.open is not None
                    batch, part.open = part.open, None
                try:
                    delivery = await self.producer.send_batch(
                        batch.builder, topic, partition=partition
                    )
                except Exception as exc:
                    _settle(batch.acked, exc)
                    continue
                delivery.add_done_callback(partial(_on_delivery, batch.acked))
                # Hand over the next batch only once this one is acknowledged:
                # aiokafka has one request in flight per broker anyway, and
                # meanwhile new messages gather in part.open, so the next produce
                # request carries everything that arrived during this round trip
                # (a few large batches instead of one small batch per request —
                # aiokafka's cost is mostly per batch and per request). Bounded:
                # a batch stuck in retries must not hold back the partition.
                await asyncio.wait([delivery], timeout=self.timeout)
        finally:
            part.flusher = None


def _on_delivery(acked: asyncio.Future[None], delivery: asyncio.Future[Any]) -> None:
    if delivery.cancelled():
        _settle(acked, PublishFailed("the delivery was cancelled"))
    else:
        _settle(acked, delivery.exception())


def _settle(acked: asyncio.Future[None], exc: BaseException | None) -> None:
    if acked.done():
        return
    if exc is None:
        acked.set_result(None)
    else:
        acked.set_exception(exc)
        # the requests waiting on it may have timed out already: mark it seen
        acked.add_done_callback(lambda f: f.exception())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the broker did not acknowledge the events in time"
    return f"the broker did not acknowledge the events: {type(exc).__name__}: {exc}"
