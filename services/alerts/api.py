"""The alerts admin API (``admin`` scope): rules, webhook subscriptions, deliveries,
alerts. Every route needs an admin key; client mistakes get a precise 4xx."""

from __future__ import annotations

import ipaddress
import secrets
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts import payloads, store
from services.alerts.delivery import DeliveryWorker, load_delivery_row
from services.alerts.retry import RetryPolicy
from services.alerts.rules import Rule, reject_nul
from services.alerts.settings import AlertsSettings
from services.alerts.signing import generate_secret
from services.alerts.ssrf import SsrfRefused, check_addresses
from services.alerts.tables import alerts, deliveries, delivery_attempts, rules, subscriptions
from shared.auth import Scope, require_scope

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope(Scope.ADMIN))])

EventType = Literal["alert.fired", "alert.resolved", "score.band_changed"]
SeverityName = Literal["info", "warning", "critical"]


def _engine(request: Request) -> AsyncEngine:
    engine: AsyncEngine = request.app.state.engine
    return engine


def _settings(request: Request) -> AlertsSettings:
    settings: AlertsSettings = request.app.state.settings
    return settings


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


# --- rules -------------------------------------------------------------------


@router.get("/rules")
async def list_rules(request: Request) -> dict[str, Any]:
    async with _engine(request).connect() as conn:
        items = await store.list_rules(conn)
    return {"rules": [r.model_dump() for r in items]}


@router.post("/rules", status_code=201)
async def create_rule(rule: Rule, request: Request) -> dict[str, Any]:
    async with _engine(request).begin() as conn:
        if await store.get_rule(conn, rule.id):
            raise HTTPException(409, f"rule {rule.id!r} already exists (use PUT to replace it)")
        await store.upsert_rules(conn, [rule])
    return rule.model_dump()


@router.get("/rules/{rule_id}")
async def get_rule(rule_id: str, request: Request) -> dict[str, Any]:
    async with _engine(request).connect() as conn:
        rule = await store.get_rule(conn, rule_id)
    if rule is None:
        raise HTTPException(404, f"no rule {rule_id!r}")
    return rule.model_dump()


def _body_error(field: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


def _validated(data: dict[str, Any]) -> Rule:
    """The rule of a PUT or PATCH body, refused exactly as a POST body is: 422
    ``{"errors": [{field, message}]}`` naming each invalid field (``body.kpi``…)."""
    try:
        return Rule.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None


@router.put("/rules/{rule_id}")
async def replace_rule(rule_id: str, body: dict[str, Any], request: Request) -> dict[str, Any]:
    """Create or replace the rule with this id (the body's id, if any, must match)."""
    if body.get("id", rule_id) != rule_id:
        raise _body_error("id", "the id in the body differs from the id in the path")
    rule = _validated(body | {"id": rule_id})
    async with _engine(request).begin() as conn:
        await store.upsert_rules(conn, [rule])
    return rule.model_dump()


@router.patch("/rules/{rule_id}")
async def update_rule(rule_id: str, body: dict[str, Any], request: Request) -> dict[str, Any]:
    if body.get("id", rule_id) != rule_id:
        raise _body_error("id", "a rule's id cannot be changed")
    async with _engine(request).begin() as conn:
        rule = await store.get_rule(conn, rule_id)
        if rule is None:
            raise HTTPException(404, f"no rule {rule_id!r}")
        updated = _validated(rule.model_dump() | body)
        await store.upsert_rules(conn, [updated])
    return updated.model_dump()


@router.delete("/rules/{rule_id}", status_code=204)
async def delete_rule(rule_id: str, request: Request) -> Response:
    async with _engine(request).begin() as conn:
        result = await conn.execute(delete(rules).where(rules.c.id == rule_id))
    if not result.rowcount:
        raise HTTPException(404, f"no rule {rule_id!r}")
    return Response(status_code=204)


# --- webhooks ----------------------------------------------------------------


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _no_nul = model_validator(mode="before")(reject_nul)

    severity: list[SeverityName] | None = None
    rule_ids: list[str] | None = None
    account_ids: list[str] | None = None


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("the webhook URL must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("the webhook URL has no host")
    if parts.username or parts.password:
        raise ValueError("credentials in the webhook URL are not allowed")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the webhook URL has an invalid port") from None
    return url


def _all_event_types() -> list[EventType]:
    return ["alert.fired", "alert.resolved", "score.band_changed"]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _no_nul = model_validator(mode="before")(reject_nul)

    url: str = Field(max_length=2000)
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] = Field(default_factory=_all_event_types, min_length=1)
    filters: Filters = Field(default_factory=Filters)
    format: Literal["standard", "slack"] = "standard"
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _check_url(v)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    _no_nul = model_validator(mode="before")(reject_nul)

    url: str | None = Field(default=None, max_length=2000)
    description: str | None = Field(default=None, max_length=500)
    event_types: list[EventType] | None = Field(default=None, min_length=1)
    filters: Filters | None = None
    format: Literal["standard", "slack"] | None = None
    enabled: bool | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v)


def _refuse_literal_private(url: str, settings: AlertsSettings) -> None:
    """Early, friendly refusal of a URL whose host is a blocked IP literal (names are
    checked at connect time, where it matters)."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    try:
        check_addresses(host, [host], settings.allowlist)
    except SsrfRefused as exc:
        raise HTTPException(422, str(exc)) from None


def _webhook_out(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "description": row.description,
        "event_types": row.event_types,
        "filters": {
            "severity": row.filter_severities,
            "rule_ids": row.filter_rule_ids,
            "account_ids": row.filter_account_ids,
        },
        "format": row.format,
        "enabled": row.enabled,
        "disabled_reason": row.disabled_reason,
        "secret_rotation_overlap_until": _iso(row.previous_secret_expires_at),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


async def _get_webhook(engine: AsyncEngine, webhook_id: str) -> Any:
    async with engine.connect() as conn:
        row = (
            await conn.execute(select(subscriptions).where(subscriptions.c.id == webhook_id))
        ).first()
    if row is None:
        raise HTTPException(404, f"no webhook {webhook_id!r}")
    return row


@router.get("/webhooks")
async def list_webhooks(request: Request) -> dict[str, Any]:
    async with _engine(request).connect() as conn:
        rows = (
            await conn.execute(select(subscriptions).order_by(subscriptions.c.created_at))
        ).all()
    return {"webhooks": [_webhook_out(r) for r in rows]}


@router.post("/webhooks", status_code=201)
async def create_webhook(body: WebhookIn, request: Request) -> dict[str, Any]:
    """Create a subscription; the response carries its ``whsec_`` secret, shown only once."""
    _refuse_literal_private(body.url, _settings(request))
    secret = generate_secret()
    webhook_id = "wh_" + secrets.token_hex(8)
    async with _engine(request).begin() as conn:
        row = (
            await conn.execute(
                insert(subscriptions)
                .values(
                    id=webhook_id,
                    url=body.url,
                    description=body.description,
                    event_types=list(body.event_types),
                    filter_severities=body.filters.severity,
                    filter_rule_ids=body.filters.rule_ids,
                    filter_account_ids=body.filters.account_ids,
                    format=body.format,
                    enabled=body.enabled,
                    secret=secret,
                )
                .returning(*subscriptions.c)
            )
        ).one()
    return _webhook_out(row) | {"secret": secret}


@router.get("/webhooks/{webhook_id}")
async def get_webhook(webhook_id: str, request: Request) -> dict[str, Any]:
    return _webhook_out(await _get_webhook(_engine(request), webhook_id))


@router.patch("/webhooks/{webhook_id}")
async def update_webhook(webhook_id: str, body: WebhookPatch, request: Request) -> dict[str, Any]:
    """Change fields; ``{"enabled": false}`` / ``true`` disables / enables it."""
    values: dict[str, Any] = {}
    if body.url is not None:
        _refuse_literal_private(body.url, _settings(request))
        values["url"] = body.url
    for name in ("description", "format", "enabled"):
        if name in body.model_fields_set and getattr(body, name) is not None:
            values[name] = getattr(body, name)
    if body.event_types is not None:
        values["event_types"] = list(body.event_types)
    if body.filters is not None:
        values |= {
            "filter_severities": body.filters.severity,
            "filter_rule_ids": body.filters.rule_ids,
            "filter_account_ids": body.filters.account_ids,
        }
    if body.enabled:
        values["disabled_reason"] = None
    elif body.enabled is False:
        values["disabled_reason"] = "disabled through the API"
    engine = _engine(request)
    await _get_webhook(engine, webhook_id)
    if values:
        async with engine.begin() as conn:
            await conn.execute(
                update(subscriptions)
                .where(subscriptions.c.id == webhook_id)
                .values(**values, updated_at=func.now())
            )
    return _webhook_out(await _get_webhook(engine, webhook_id))


@router.delete("/webhooks/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: str, request: Request) -> Response:
    async with _engine(request).begin() as conn:
        result = await conn.execute(delete(subscriptions).where(subscriptions.c.id == webhook_id))
        if result.rowcount:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.subscription_id == webhook_id, deliveries.c.status == "pending")
                .values(status="disabled", last_error="subscription deleted")
            )
    if not result.rowcount:
        raise HTTPException(404, f"no webhook {webhook_id!r}")
    return Response(status_code=204)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: float | None = Field(default=None, ge=0, le=30 * 86400)


@router.post("/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(
    webhook_id: str, request: Request, body: RotateIn | None = None
) -> dict[str, Any]:
    """A new secret (shown once). The old one keeps signing, next to the new one, for
    ``overlap_seconds`` (default HEALTHSCORE_WEBHOOK_SECRET_OVERLAP, 24 h)."""
    engine = _engine(request)
    row = await _get_webhook(engine, webhook_id)
    overlap = (
        body.overlap_seconds
        if body and body.overlap_seconds is not None
        else _settings(request).webhook_secret_overlap
    )
    secret = generate_secret()
    until = datetime.now(UTC) + timedelta(seconds=overlap)
    async with engine.begin() as conn:
        await conn.execute(
            update(subscriptions)
            .where(subscriptions.c.id == webhook_id)
            .values(
                secret=secret,
                previous_secret=row.secret,
                previous_secret_expires_at=until,
                updated_at=func.now(),
            )
        )
    return {"id": webhook_id, "secret": secret, "previous_secret_valid_until": _iso(until)}


@router.post("/webhooks/{webhook_id}/test")
async def test_webhook(webhook_id: str, request: Request) -> dict[str, Any]:
    """Send one signed ``webhook.test`` event now (a single attempt, recorded as a
    delivery) and report what the receiver answered."""
    engine = _engine(request)
    sub = await _get_webhook(engine, webhook_id)
    now = datetime.now(UTC)
    event = {
        "type": "webhook.test",
        "timestamp": _iso(now),
        "data": {"webhook_id": webhook_id, "message": "Test event from Healthscore"},
    }
    body = (
        orjson.dumps({"text": f"Test message from Healthscore (webhook {webhook_id})"})
        if sub.format == "slack"
        else payloads.encode_standard(event)
    )
    row = store.outbox_row(webhook_id, "webhook.test", body, None, now)
    # A test is one attempt, made here: failed if it does not succeed, never retried.
    # Due far in the future so that no delivery worker claims it meanwhile.
    row["next_attempt_at"] = now + timedelta(days=1)
    async with engine.begin() as conn:
        await conn.execute(insert(deliveries).values(row))
    delivery = await load_delivery_row(engine, row["id"])
    assert delivery is not None
    delivery["enabled"] = True  # testing a disabled subscription is allowed
    worker = DeliveryWorker(_settings(request), engine, request.app.state.http)
    worker.policy = RetryPolicy(schedule=(0.0,))
    result = await worker.deliver(delivery)
    assert result is not None
    return {
        "delivery_id": row["id"],
        "delivered": result.outcome == "delivered",
        "status_code": result.status_code,
        "error": result.error,
        "duration_seconds": round(result.duration, 4),
    }


# --- deliveries --------------------------------------------------------------

DeliveryStatus = Literal["pending", "delivered", "failed", "disabled"]


def _delivery_out(row: Any, attempts: list[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "subscription_id": row.subscription_id,
        "event_type": row.event_type,
        "alert_id": row.alert_id,
        "status": row.status,
        "attempts": row.attempts,
        "next_attempt_at": _iso(row.next_attempt_at) if row.status == "pending" else None,
        "created_at": _iso(row.created_at),
        "delivered_at": _iso(row.delivered_at),
        "last_error": row.last_error,
        "attempt_log": [
            {
                "attempt": a.attempt,
                "at": _iso(a.attempted_at),
                "status_code": a.status_code,
                "error": a.error,
                "duration_seconds": round(a.duration_seconds, 4),
            }
            for a in attempts
        ],
    }


@router.get("/deliveries")
async def list_deliveries(
    request: Request,
    status: DeliveryStatus | None = None,
    subscription_id: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    q = select(*[c for c in deliveries.c if c.name != "payload"])
    if status:
        q = q.where(deliveries.c.status == status)
    if subscription_id:
        q = q.where(deliveries.c.subscription_id == subscription_id)
    if since:
        q = q.where(deliveries.c.created_at >= _aware(since))
    q = q.order_by(deliveries.c.created_at.desc()).limit(limit)
    async with _engine(request).connect() as conn:
        rows = (await conn.execute(q)).all()
        ids = [r.id for r in rows]
        attempts = (
            (
                await conn.execute(
                    select(delivery_attempts)
                    .where(delivery_attempts.c.delivery_id.in_(ids))
                    .order_by(delivery_attempts.c.id)
                )
            ).all()
            if ids
            else []
        )
    by_id: dict[str, list[Any]] = {}
    for a in attempts:
        by_id.setdefault(a.delivery_id, []).append(a)
    return {"deliveries": [_delivery_out(r, by_id.get(r.id, [])) for r in rows]}


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@router.post("/deliveries/replay")
async def replay_since(
    request: Request, since: Annotated[datetime, Query(description="ISO 8601 time")]
) -> dict[str, Any]:
    """Replay every failed delivery created at or after ``since``. Those whose webhook
    was deleted cannot be sent any more: they are left failed and counted in ``skipped``."""
    async with _engine(request).begin() as conn:
        ids = await store.replay(conn, since=_aware(since))
        skipped = await store.count_unreplayable(conn, since=_aware(since))
    out: dict[str, Any] = {"replayed": len(ids), "ids": ids, "skipped": skipped}
    if skipped:
        out["skipped_reason"] = "their webhook was deleted"
    return out


@router.get("/deliveries/{delivery_id}")
async def get_delivery(delivery_id: str, request: Request) -> dict[str, Any]:
    async with _engine(request).connect() as conn:
        row = (await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))).first()
        if row is None:
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        attempts = (
            await conn.execute(
                select(delivery_attempts)
                .where(delivery_attempts.c.delivery_id == delivery_id)
                .order_by(delivery_attempts.c.id)
            )
        ).all()
    return _delivery_out(row, list(attempts)) | {"payload": bytes(row.payload).decode()}


@router.post("/deliveries/{delivery_id}/replay")
async def replay_one(delivery_id: str, request: Request) -> dict[str, Any]:
    """Send a failed (or disabled) delivery again, with the same webhook-id. 409 when
    it is not failed or disabled, or when its webhook was deleted (nothing could send it)."""
    async with _engine(request).begin() as conn:
        found = (
            await conn.execute(
                select(deliveries.c.status, subscriptions.c.id)
                .outerjoin(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
                .where(deliveries.c.id == delivery_id)
                .with_for_update(of=deliveries)
            )
        ).first()
        if found is None:
            raise HTTPException(404, f"no delivery {delivery_id!r}")
        status, subscription_id = found
        if status not in ("failed", "disabled"):
            raise HTTPException(
                409,
                f"delivery {delivery_id!r} is {status}; only failed or "
                "disabled deliveries can be replayed",
            )
        if subscription_id is None:
            raise HTTPException(
                409,
                f"delivery {delivery_id!r} cannot be replayed: its webhook was deleted",
            )
        await store.replay(conn, delivery_id=delivery_id)
    return {"replayed": 1, "ids": [delivery_id]}


# --- alerts ------------------------------------------------------------------


@router.get("/alerts")
async def list_alerts(
    request: Request,
    account_id: Annotated[list[str] | None, Query(max_length=200)] = None,
    status: Literal["open", "resolved"] | None = None,
    rule_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    """Open and past alerts, newest first, each with a summary of its webhook
    deliveries (``{"delivered": n, "pending": n, "failed": n, ...}``).
    ``account_id`` may be repeated."""
    q = select(alerts)
    if account_id:
        q = q.where(alerts.c.account_id.in_(account_id))
    if status:
        q = q.where(alerts.c.status == status)
    if rule_id:
        q = q.where(alerts.c.rule_id == rule_id)
    q = q.order_by(alerts.c.fired_at.desc()).limit(limit)
    async with _engine(request).connect() as conn:
        rows = (await conn.execute(q)).all()
        summary: dict[str, dict[str, int]] = {}
        if rows:
            counts = await conn.execute(
                select(deliveries.c.alert_id, deliveries.c.status, func.count())
                .where(deliveries.c.alert_id.in_([r.id for r in rows]))
                .group_by(deliveries.c.alert_id, deliveries.c.status)
            )
            for alert_id, state, n in counts:
                summary.setdefault(alert_id, {})[state] = int(n)
    return {
        "alerts": [
            {
                "id": r.id,
                "account_id": r.account_id,
                "account_name": r.account_name,
                "rule": {"id": r.rule_id, "name": r.rule_name, "severity": r.severity},
                "kpi": r.kpi,
                "status": r.status,
                "value": r.value,
                "threshold": r.threshold,
                "fired_at": _iso(r.fired_at),
                "resolved_at": _iso(r.resolved_at),
                "resolved_value": r.resolved_value,
                "snapshot": r.snapshot,
                "deliveries": summary.get(r.id, {}),
            }
            for r in rows
        ]
    }
