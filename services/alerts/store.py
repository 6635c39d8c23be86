"""SQL adapter for rules, subscriptions and the outbox. Functions take a connection;
the caller owns the transaction."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.alerts.rules import Rule, describe, load_rules
from services.alerts.subscriptions import Subscription
from services.alerts.tables import deliveries, rules, subscriptions

log = logging.getLogger(__name__)


# NOTIFY channel: "the outbox has new due rows" (wakes delivery workers in every process).
OUTBOX_CHANNEL = "healthscore_outbox"


async def notify_outbox(conn: AsyncConnection) -> None:
    """Wake every listening delivery worker when this transaction commits."""
    await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": OUTBOX_CHANNEL})


def new_delivery_id() -> str:
    return "msg_" + secrets.token_hex(12)


def rule_row(rule: Rule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "kpi": rule.kpi,
        "op": rule.op,
        "threshold": rule.threshold,
        "resolve_threshold": rule.resolve_threshold,
        "for_evaluations": rule.for_evaluations,
        "cooldown_seconds": rule.cooldown,
        "lifecycle_stages": rule.lifecycle_stages,
        "respect_grace": rule.respect_grace,
        "severity": rule.severity,
        "enabled": rule.enabled,
        "description": rule.description,
    }


def checked_rule_from_row(row: Any) -> tuple[Rule, str | None]:
    """The stored rule, and what is wrong with it (None when it is valid).

    A rule stored before a check it now fails (e.g. one on an unknown KPI, accepted
    by an older release) is returned unchecked rather than refused, so the API can
    still show, fix or delete it; :func:`list_rules` keeps it out of evaluation.
    """
    fields = {
        "id": row.id,
        "name": row.name,
        "kpi": row.kpi,
        "op": row.op,
        "threshold": row.threshold,
        "resolve_threshold": row.resolve_threshold,
        "for_evaluations": row.for_evaluations,
        "cooldown": row.cooldown_seconds,
        "lifecycle_stages": row.lifecycle_stages,
        "respect_grace": row.respect_grace,
        "severity": row.severity,
        "enabled": row.enabled,
        "description": row.description,
    }
    try:
        return Rule.model_validate(fields), None
    except ValidationError as exc:
        return Rule.model_construct(**fields), describe(exc)


def rule_from_row(row: Any) -> Rule:
    return checked_rule_from_row(row)[0]


_reported_invalid: set[tuple[str, str]] = set()  # log each invalid stored rule once


async def list_rules(conn: AsyncConnection, enabled_only: bool = False) -> list[Rule]:
    """Every stored rule, by id; ``enabled_only`` gives the rules to evaluate: enabled
    and valid (an invalid one is logged once and skipped, never crashes the consumer)."""
    q = select(rules).order_by(rules.c.id)
    if enabled_only:
        q = q.where(rules.c.enabled)
    out = []
    for row in (await conn.execute(q)).all():
        rule, problem = checked_rule_from_row(row)
        if problem is not None and enabled_only:
            if (rule.id, problem) not in _reported_invalid:
                _reported_invalid.add((rule.id, problem))
                log.warning(
                    "invalid stored rule not evaluated: fix it with PUT/PATCH /v1/rules/{id}",
                    extra={"rule_id": rule.id, "problem": problem},
                )
            continue
        out.append(rule)
    return out


async def get_rule(conn: AsyncConnection, rule_id: str) -> Rule | None:
    row = (await conn.execute(select(rules).where(rules.c.id == rule_id))).first()
    return rule_from_row(row) if row else None


async def upsert_rules(conn: AsyncConnection, items: Sequence[Rule]) -> tuple[int, int]:
    """Insert or replace rules by id; returns (created, updated)."""
    if not items:
        return 0, 0
    existing = set(
        (
            await conn.execute(select(rules.c.id).where(rules.c.id.in_([r.id for r in items])))
        ).scalars()
    )
    stmt = insert(rules).values([rule_row(r) for r in items])
    cols = {c: stmt.excluded[c] for c in rule_row(items[0]) if c != "id"}
    await conn.execute(
        stmt.on_conflict_do_update(index_elements=["id"], set_=cols | {"updated_at": func.now()})
    )
    updated = len(existing)
    return len(items) - updated, updated


class RulesFileError(ValueError):
    """A rules file that cannot be read or holds an invalid rule; the message names
    the file, and the rule and field at fault."""


def read_rules_file(path: Path) -> list[Rule]:
    """The rules of a YAML file, every one valid (:class:`RulesFileError` otherwise)."""
    try:
        return load_rules(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise RulesFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise RulesFileError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise RulesFileError(f"{path}: {exc}") from None


async def load_default_rules(engine: AsyncEngine, path: Path) -> int:
    """Load ``path`` when the rules table is empty (first start); returns rules added."""
    async with engine.begin() as conn:
        # One loader at a time when several alerts processes start together.
        await conn.execute(select(func.pg_advisory_xact_lock(0x616C657274)))
        count = (await conn.execute(select(func.count()).select_from(rules))).scalar_one()
        if count:
            return 0
        items = read_rules_file(path)
        await upsert_rules(conn, items)
    log.info("loaded default rules", extra={"count": len(items), "file": str(path)})
    return len(items)


def subscription_from_row(row: Any) -> Subscription:
    def tup(v: list[str] | None) -> tuple[str, ...] | None:
        return None if v is None else tuple(v)

    return Subscription(
        id=row.id,
        url=row.url,
        event_types=tuple(row.event_types),
        format=row.format,
        enabled=row.enabled,
        severities=tup(row.filter_severities),
        rule_ids=tup(row.filter_rule_ids),
        account_ids=tup(row.filter_account_ids),
    )


async def enabled_subscriptions(conn: AsyncConnection) -> list[Subscription]:
    rows = (await conn.execute(select(subscriptions).where(subscriptions.c.enabled))).all()
    return [subscription_from_row(r) for r in rows]


def outbox_row(
    subscription_id: str,
    event_type: str,
    payload: bytes,
    alert_id: str | None,
    now: datetime | None = None,
) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    return {
        "id": new_delivery_id(),
        "subscription_id": subscription_id,
        "event_type": event_type,
        "alert_id": alert_id,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


async def pending_count(conn: AsyncConnection) -> int:
    q = select(func.count()).select_from(deliveries).where(deliveries.c.status == "pending")
    return int((await conn.execute(q)).scalar_one())


def _subscription_exists() -> Any:
    """The delivery's subscription still exists (deleting one keeps its deliveries)."""
    return (
        select(subscriptions.c.id)
        .where(subscriptions.c.id == deliveries.c.subscription_id)
        .exists()
    )


async def replay(
    conn: AsyncConnection, *, delivery_id: str | None = None, since: datetime | None = None
) -> list[str]:
    """Put failed (or disabled) deliveries back in the outbox, due now, keeping their
    webhook-id and attempt history; returns their ids.

    Deliveries whose subscription was deleted are left as they are: no worker can send
    them (it needs the subscription's URL and secret), so they would stay pending for
    ever. :func:`count_unreplayable` counts them."""
    q = update(deliveries).values(
        status="pending", attempts=0, next_attempt_at=func.now(), last_error=None
    )
    if delivery_id is not None:
        q = q.where(deliveries.c.id == delivery_id, deliveries.c.status.in_(["failed", "disabled"]))
    else:
        q = q.where(deliveries.c.status == "failed", deliveries.c.created_at >= since)
    q = q.where(_subscription_exists())
    ids = list((await conn.execute(q.returning(deliveries.c.id))).scalars())
    if ids:
        await notify_outbox(conn)
    return ids


async def count_unreplayable(
    conn: AsyncConnection, *, delivery_id: str | None = None, since: datetime | None = None
) -> int:
    """How many of the deliveries :func:`replay` would take (the same arguments) it
    leaves alone because their subscription was deleted."""
    q = select(func.count()).select_from(deliveries).where(~_subscription_exists())
    if delivery_id is not None:
        q = q.where(deliveries.c.id == delivery_id, deliveries.c.status.in_(["failed", "disabled"]))
    else:
        q = q.where(deliveries.c.status == "failed", deliveries.c.created_at >= since)
    return int((await conn.execute(q)).scalar_one())
