"""The health consumer: batches of HealthSnapshot messages → one Postgres transaction
(rule state, alert history, outbox rows for every matching subscription, last
revision per account, consumed offsets) → Kafka commit.

Idempotent: snapshots with ``revision <= last seen`` for their account are skipped,
and offsets live in Postgres next to the state (the consumer seeks to them on
assignment), so a redelivered message never creates a second alert. A message
that is not a snapshot goes to the dead-letter topic with the reason, and so does
a snapshot PostgreSQL refuses to store (:func:`record_batch`): one message never
stalls the consumer (SPEC §8).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from pydantic import ValidationError
from sqlalchemy import delete, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerts import metrics, payloads, store
from services.alerts.rules import Rule
from services.alerts.settings import AlertsSettings
from services.alerts.state_machine import AlertTransition, RuleState, band_change, evaluate
from services.alerts.tables import accounts_seen, alert_state, alerts, consumer_offsets, deliveries
from shared.health import HealthSnapshot, is_newer
from shared.kafka import BrokerMemoryCheck, consume_until_stopped, dead_letter

log = logging.getLogger(__name__)
IDLE_CHECK_SECONDS = 5.0  # idle this long: ask whether the broker still knows us
# SQLSTATE classes saying PostgreSQL refused a statement's data: 22 data exception
# (e.g. 22021 a NUL in text, 22P02 NaN in a JSON column), 23 integrity constraint
# violation, 54 program limit exceeded (e.g. an index row too large).
DATA_ERROR_CLASSES = frozenset({"22", "23", "54"})


def new_alert_id() -> str:
    return "alr_" + secrets.token_hex(10)


@dataclass
class BatchResult:
    snapshots: int = 0
    skipped_stale: int = 0
    transitions: list[tuple[str, str]] = field(default_factory=list)  # (rule id, transition)
    outbox_rows: int = 0

    def add(self, other: BatchResult) -> None:
        self.snapshots += other.snapshots
        self.skipped_stale += other.skipped_stale
        self.transitions += other.transitions
        self.outbox_rows += other.outbox_rows


def _excerpt(s: HealthSnapshot) -> dict[str, Any]:
    return {
        "revision": s.revision,
        "as_of": s.as_of.isoformat(),
        "evaluated_at": s.evaluated_at.isoformat(),
        "score": s.score,
        "band": s.band,
        "score_delta_7d": s.score_delta_7d,
        "lifecycle_stage": s.lifecycle_stage,
        "in_grace_period": s.in_grace_period,
        "kpis": s.kpis,
    }


async def apply_snapshots(
    conn: AsyncConnection,
    snapshots: Sequence[HealthSnapshot],
    dashboard_url: str,
    id_factory: Callable[[], str] = new_alert_id,
) -> BatchResult:
    """Evaluate every enabled rule on the new snapshots and write the outcome. Runs
    inside the caller's transaction."""
    result = BatchResult()
    if not snapshots:
        return result
    account_ids = sorted({s.account_id for s in snapshots})
    # Serialise batches touching the same accounts (two consumers can hold the same
    # partition for a moment during a rebalance): one transaction-scoped advisory
    # lock per account, always taken in the same order, before reading revisions.
    await conn.execute(
        text(
            "SELECT pg_advisory_xact_lock(h) FROM (SELECT hashtextextended(a, 7) AS h "
            "FROM unnest(CAST(:ids AS text[])) AS a ORDER BY h) AS locks"
        ),
        {"ids": account_ids},
    )
    seen_rows = (
        await conn.execute(
            select(accounts_seen)
            .where(accounts_seen.c.account_id.in_(account_ids))
            .with_for_update()
        )
    ).all()
    last_rev: dict[str, int | None] = {r.account_id: r.last_revision for r in seen_rows}
    last_band: dict[str, str | None] = {r.account_id: r.last_band for r in seen_rows}
    fresh: list[HealthSnapshot] = []
    for s in sorted(snapshots, key=lambda x: (x.account_id, x.revision)):
        if is_newer(s, last_rev.get(s.account_id)):
            fresh.append(s)
            last_rev[s.account_id] = s.revision
        else:
            result.skipped_stale += 1
    result.snapshots = len(fresh)
    if not fresh:
        return result

    rules = await store.list_rules(conn, enabled_only=True)
    subs = await store.enabled_subscriptions(conn)
    fresh_accounts = sorted({s.account_id for s in fresh})
    states: dict[tuple[str, str], RuleState] = {}
    if rules:
        rows = (
            await conn.execute(
                select(alert_state)
                .where(alert_state.c.account_id.in_(fresh_accounts))
                .with_for_update()
            )
        ).all()
        states = {
            (r.account_id, r.rule_id): RuleState(
                r.consecutive, r.open_alert_id, r.fired_at, r.resolved_at
            )
            for r in rows
        }
    original = dict(states)
    new_alerts: list[dict[str, Any]] = []
    resolved: list[tuple[AlertTransition, HealthSnapshot]] = []
    outbox: list[dict[str, Any]] = []
    now = datetime.now(UTC)

    def enqueue(event: dict[str, Any], severity: str | None, alert_id: str | None) -> None:
        for sub in subs:
            if sub.matches(event, severity):
                body = payloads.encode(event, sub.format, dashboard_url)
                outbox.append(store.outbox_row(sub.id, event["type"], body, alert_id, now))

    for snap in fresh:
        change = band_change(snap, last_band.get(snap.account_id))
        if snap.band is not None:
            last_band[snap.account_id] = snap.band
        if change is not None:
            result.transitions.append(("band", "band_changed"))
            enqueue(
                payloads.band_event(snap, change.previous_band, change.at),
                payloads.BAND_SEVERITY.get(change.band),
                None,
            )
        for rule in rules:
            key = (snap.account_id, rule.id)
            state, event = evaluate(rule, states.get(key, RuleState()), snap, id_factory())
            states[key] = state
            if event is None:
                continue
            result.transitions.append((rule.id, event.transition))
            if event.transition == "fired":
                new_alerts.append(_alert_row(rule, event, snap))
            else:
                resolved.append((event, snap))
            enqueue(
                payloads.alert_event(
                    f"alert.{event.transition}",
                    rule=rule,
                    alert_id=event.alert_id,
                    value=event.value,
                    fired_at=event.fired_at,
                    at=event.at,
                    snapshot=snap,
                ),
                rule.severity,
                event.alert_id,
            )

    changed = [
        {
            "account_id": a,
            "rule_id": r,
            "consecutive": st.consecutive,
            "open_alert_id": st.open_alert_id,
            "fired_at": st.fired_at,
            "resolved_at": st.resolved_at,
        }
        for (a, r), st in states.items()
        if original.get((a, r)) != st
    ]
    if changed:
        # executemany (not one multi-VALUES statement): compiled once and cached.
        stmt = insert(alert_state)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["account_id", "rule_id"],
                set_={
                    c: stmt.excluded[c]
                    for c in ("consecutive", "open_alert_id", "fired_at", "resolved_at")
                },
            ),
            changed,
        )
    if new_alerts:
        await conn.execute(insert(alerts), new_alerts)
    for event, _snap in resolved:
        await conn.execute(
            update(alerts)
            .where(alerts.c.id == event.alert_id)
            .values(status="resolved", resolved_at=event.at, resolved_value=event.value)
        )
    if outbox:
        await conn.execute(insert(deliveries), outbox)
        await store.notify_outbox(conn)
        result.outbox_rows = len(outbox)
    seen = insert(accounts_seen)
    await conn.execute(
        seen.on_conflict_do_update(
            index_elements=["account_id"],
            set_={
                "last_revision": seen.excluded.last_revision,
                "last_band": seen.excluded.last_band,
                "updated_at": seen.excluded.updated_at,
            },
        ),
        [
            {
                "account_id": a,
                "last_revision": last_rev[a],
                "last_band": last_band.get(a),
                "updated_at": now,
            }
            for a in fresh_accounts
        ],
    )
    return result


def _alert_row(rule: Rule, event: AlertTransition, snap: HealthSnapshot) -> dict[str, Any]:
    return {
        "id": event.alert_id,
        "account_id": snap.account_id,
        "account_name": snap.account_name,
        "rule_id": rule.id,
        "rule_name": rule.name,
        "severity": rule.severity,
        "kpi": rule.kpi,
        "status": "open",
        "value": event.value,
        "threshold": rule.threshold,
        "fired_at": event.at,
        "fired_revision": snap.revision,
        "snapshot": _excerpt(snap),
    }


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, consumer: AIOKafkaConsumer, engine: AsyncEngine, check: BrokerMemoryCheck
    ) -> None:
        self.consumer = consumer
        self.engine = engine
        self.check = check

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        pass  # batches are applied atomically; nothing half-done to flush

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        if not assigned:
            return
        where = tuple_(consumer_offsets.c.topic, consumer_offsets.c.partition).in_(
            [(tp.topic, tp.partition) for tp in assigned]
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(consumer_offsets).where(where))).all()
        stored = {TopicPartition(r.topic, r.partition): r.next_offset for r in rows}
        lost = await self.check.forgotten(stored)
        if lost:
            # Offsets of a log the (embedded) broker no longer has: read the new log
            # from its start (snapshots are idempotent by revision).
            log.warning(
                "stored offsets belong to a log the broker lost; reading from the start",
                extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in lost]},
            )
            async with self.engine.begin() as conn:
                await conn.execute(
                    delete(consumer_offsets).where(
                        tuple_(consumer_offsets.c.topic, consumer_offsets.c.partition).in_(
                            [(tp.topic, tp.partition) for tp in lost]
                        )
                    )
                )
        for tp, offset in stored.items():
            if tp not in lost:
                self.consumer.seek(tp, offset)


async def _store_offsets(conn: AsyncConnection, offsets: dict[TopicPartition, int]) -> None:
    stmt = insert(consumer_offsets)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["topic", "partition"], set_={"next_offset": stmt.excluded.next_offset}
        ),
        [
            {"topic": tp.topic, "partition": tp.partition, "next_offset": o}
            for tp, o in offsets.items()
        ],
    )


async def _dead_letter(producer: AIOKafkaProducer, dlq_topic: str, msg: Any, reason: str) -> None:
    log.warning(
        "dead-lettered a health message",
        extra={"partition": msg.partition, "offset": msg.offset, "reason": reason[:500]},
    )
    await dead_letter(producer, dlq_topic, msg, reason)
    metrics.DEAD_LETTERED.inc()


async def decode_or_dead_letter(
    messages: Sequence[Any], producer: AIOKafkaProducer, dlq_topic: str
) -> list[tuple[Any, HealthSnapshot]]:
    """``(message, snapshot)`` for each message of ``messages`` that is a snapshot; a
    message that is not one (corrupt, or failing validation: a NUL character, a NaN
    KPI…) goes to the dead-letter topic with the reason (SPEC §8)."""
    decoded: list[tuple[Any, HealthSnapshot]] = []
    for msg in messages:
        try:
            decoded.append((msg, HealthSnapshot.decode(msg.value)))
        except (ValidationError, ValueError) as exc:
            await _dead_letter(producer, dlq_topic, msg, f"not a health snapshot: {exc}")
    return decoded


def is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says PostgreSQL (or the driver, encoding a parameter) refused
    the data of a statement: the same snapshot would fail the same way on every
    retry. A lost connection, a server shutting down, a timeout or anything else is
    not: that is an outage (or a bug), and must not dead-letter anything."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return False
        cause = (exc.orig.__cause__ or exc.orig) if exc.orig is not None else None
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
        if isinstance(sqlstate, str):
            return sqlstate[:2] in DATA_ERROR_CLASSES
        # asyncpg's own DataError (a ValueError): "invalid input for query argument"
        return isinstance(cause, ValueError)
    # a value SQLAlchemy itself could not bind (e.g. JSON serialisation)
    return isinstance(exc, StatementError) and isinstance(exc.orig, ValueError | TypeError)


def _refusal(exc: BaseException) -> str:
    """The database's own words for why it refused a snapshot (first line)."""
    orig = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    cause = orig.__cause__ or orig
    sqlstate = getattr(cause, "sqlstate", None)
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"{text} (SQLSTATE {sqlstate})" if sqlstate else text


async def record_batch(
    engine: AsyncEngine,
    decoded: Sequence[tuple[Any, HealthSnapshot]],
    offsets: dict[TopicPartition, int],
    dashboard_url: str,
    producer: AIOKafkaProducer,
    dlq_topic: str,
) -> BatchResult:
    """Apply the snapshots of one batch and store its offsets, in one transaction.

    When PostgreSQL refuses the batch's data (:func:`is_data_error`), the snapshots
    are applied again one at a time, each under its own savepoint, in one new
    transaction: a snapshot refused again goes to the dead-letter topic with the
    database's reason and the others are recorded, so one message never stalls the
    consumer. Any other failure (the database unreachable…) propagates, as before:
    nothing is dead-lettered, no offset is stored, and the batch is read again."""
    try:
        async with engine.begin() as conn:
            result = await apply_snapshots(conn, [s for _, s in decoded], dashboard_url)
            await _store_offsets(conn, offsets)
        return result
    except Exception as exc:
        if not is_data_error(exc):
            raise
        log.warning(
            "the database refused a batch: applying its snapshots one at a time",
            extra={"snapshots": len(decoded), "reason": _refusal(exc)[:500]},
        )
    result = BatchResult()
    async with engine.begin() as conn:
        for msg, snap in sorted(decoded, key=lambda d: (d[1].account_id, d[1].revision)):
            try:
                async with conn.begin_nested():
                    result.add(await apply_snapshots(conn, [snap], dashboard_url))
            except Exception as exc:
                if not is_data_error(exc):
                    raise
                reason = f"the database refused the snapshot: {_refusal(exc)}"
                await _dead_letter(producer, dlq_topic, msg, reason)
        await _store_offsets(conn, offsets)
    return result


async def run_consumer(
    settings: AlertsSettings,
    engine: AsyncEngine,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
    outbox_changed: asyncio.Event | None = None,
) -> None:
    """Consume the health topic until ``stop`` is set; finishes the batch in hand.
    Sets ``outbox_changed`` after a commit that added deliveries (wakes the workers).
    ``producer`` writes the messages that cannot be processed to the dead-letter topic."""

    def subscribe(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> None:
        consumer.subscribe(
            [settings.topics.health], listener=_SeekToStored(consumer, engine, check)
        )

    async def consume(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> bool:
        idle_since = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=settings.health_batch_max)
            if not batches:
                if time.monotonic() - idle_since > IDLE_CHECK_SECONDS:
                    idle_since = time.monotonic()
                    if await check.lost_state():
                        return True
                continue
            if await check.lost_state(batches):
                return True  # the batch is from a new log: drop it, rebuild
            idle_since = time.monotonic()
            decoded: list[tuple[Any, HealthSnapshot]] = []
            offsets: dict[TopicPartition, int] = {}
            for tp, messages in batches.items():
                decoded += await decode_or_dead_letter(messages, producer, settings.topics.dlq)
                offsets[tp] = messages[-1].offset + 1
            result = await record_batch(
                engine, decoded, offsets, settings.dashboard_url, producer, settings.topics.dlq
            )
            for rule_id, transition in result.transitions:
                metrics.ALERTS.labels(rule_id, transition).inc()
            if result.outbox_rows and outbox_changed is not None:
                outbox_changed.set()
            try:
                await asyncio.wait_for(consumer.commit(offsets), 10)
                check.committed(offsets)
            except Exception as exc:  # the Kafka commit is a hint; Postgres holds the truth
                log.warning("kafka commit failed", extra={"reason": str(exc)})
        return False

    await consume_until_stopped(settings, settings.consumer_group, subscribe, consume, stop)
