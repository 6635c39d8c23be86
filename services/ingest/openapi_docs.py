"""OpenAPI documentation of the ingest routes (request bodies, answers, examples).

The handlers read raw bodies for speed, so FastAPI cannot infer the request
schemas; they are declared here (``openapi_extra``) from the same pydantic
models that validate them, and the models' definitions are added to
``components/schemas``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field

from shared.events import Event

DESCRIPTION = """\
Send product and communication events to Healthscore.

* `POST /v1/events` — the native API: 1–2,500 events, all or nothing.
* `POST /v1/batch` (and `/v1/import`, `/v1/track`, `/v1/identify`, `/v1/group`,
  `/v1/page`, `/v1/screen`, `/v1/alias`) — Segment-compatible: point any Segment
  or RudderStack library at this host.

Auth: `Authorization: Bearer <key>`, HTTP Basic with the key as user name, or
`writeKey` in a Segment body. Limits: 512 KiB per (uncompressed) body, 32 KiB per
event, 2,500 events per request; `Content-Encoding: gzip` accepted.
"""

_REF = "#/components/schemas/{model}"


class EventsBody(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid")
    events: list[Event] = Field(min_length=1, max_length=2500)


class SegmentBatch(BaseModel):
    """Body of ``POST /v1/batch`` (Segment's batch format)."""

    batch: list[dict[str, Any]]
    context: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class SegmentMessage(BaseModel):
    """One Segment call (``/v1/track`` and friends); type implied by the path."""

    userId: str | None = None
    anonymousId: str | None = None
    messageId: str | None = None
    event: str | None = Field(default=None, description="track: the event name")
    groupId: str | None = Field(default=None, description="group: the account id")
    timestamp: str | None = None
    sentAt: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    writeKey: str | None = None


class Accepted(BaseModel):
    accepted: int


class EventError(BaseModel):
    index: int | None
    field: str | None
    message: str


class EventErrors(BaseModel):
    errors: list[EventError]


class SegmentRejected(BaseModel):
    index: int
    reason: str


class SegmentAnswer(BaseModel):
    success: bool
    rejected: list[SegmentRejected]


class Detail(BaseModel):
    detail: str


_EVENTS_EXAMPLE = {
    "events": [
        {
            "id": "evt-0001",
            "type": "login",
            "account_id": "acme",
            "user_id": "u-42",
            "timestamp": "2026-11-20T09:30:00Z",
        },
        {
            "type": "feature_used",
            "account_id": "acme",
            "user_id": "u-42",
            "feature": "reports",
            "count": 3,
        },
        {
            "type": "communication",
            "account_id": "acme",
            "channel": "support_ticket",
            "direction": "inbound",
            "contact_id": "c-7",
            "sentiment": -0.4,
            "escalation": True,
        },
        {"type": "account_updated", "account_id": "acme", "seats_purchased": 50, "plan": "pro"},
        {
            "type": "survey_response",
            "account_id": "acme",
            "survey": "nps",
            "score": 9,
            "contact_id": "c-7",
            "sent_at": "2026-11-20T09:31:00Z",
        },
    ]
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _error(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Detail"), "example": {"detail": example}}},
    }


_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Malformed JSON or gzip", "the body is not valid JSON: unexpected character"),
    401: _error("Missing or unknown API key", "unknown or revoked API key"),
    403: _error("The key lacks the ingest scope", "this API key lacks the 'ingest' scope"),
    413: _error(
        "Body over 512 KiB (uncompressed), event over 32 KiB or over 2,500 events",
        "2501 events in one request; the limit is 2500",
    ),
    415: _error("Not JSON", "Content-Type must be application/json (got text/csv)"),
    429: _error(
        "The key's rate limit is exceeded (see Retry-After)",
        "rate limit of 10 requests per second exceeded for this API key",
    ),
    503: _error(
        "The broker did not acknowledge the events (see Retry-After); retry",
        "the broker did not acknowledge the events in time",
    ),
}

EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": "Every event was acknowledged by Kafka (acks=all)",
        "content": {"application/json": {"schema": _ref("Accepted"), "example": {"accepted": 5}}},
    },
    422: {
        "description": "Invalid events; nothing was published",
        "content": {
            "application/json": {
                "schema": _ref("EventErrors"),
                "example": {
                    "errors": [
                        {"index": 1, "field": "user_id", "message": "Field required"},
                        {
                            "index": 3,
                            "field": "timestamp",
                            "message": "timestamp is more than 5 minutes in the future",
                        },
                    ]
                },
            }
        },
    },
    **_COMMON_ERRORS,
}

EVENTS_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref("EventsBody"),
                "examples": {"mixed": {"summary": "Five event types", "value": _EVENTS_EXAMPLE}},
            }
        },
    }
}

SEGMENT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Valid items were published (acks=all); invalid ones are listed",
        "content": {
            "application/json": {
                "schema": _ref("SegmentAnswer"),
                "example": {
                    "success": True,
                    "rejected": [
                        {"index": 2, "reason": "account_id: cannot resolve the account: ..."}
                    ],
                },
            }
        },
    },
    **{k: v for k, v in _COMMON_ERRORS.items() if k != 400},
    400: {
        "description": "Malformed JSON or gzip (`detail`), or (with X-Strict-Mode: 1) any "
        "invalid item (`errors`)",
        "content": {
            "application/json": {"schema": {"anyOf": [_ref("EventErrors"), _ref("Detail")]}}
        },
    },
}

_SEGMENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {
        "userId": "u-42",
        "event": "Report Exported",
        "properties": {"account_id": "acme"},
        "messageId": "m-1",
        "timestamp": "2026-11-20T09:30:00Z",
    },
    "identify": {"userId": "u-42", "traits": {"email": "ana@acme.test", "account_id": "acme"}},
    "group": {"userId": "u-42", "groupId": "acme", "traits": {"name": "Acme", "seats": 50}},
    "page": {"userId": "u-42", "name": "Dashboard", "context": {"groupId": "acme"}},
    "screen": {"userId": "u-42", "name": "Home", "context": {"groupId": "acme"}},
    "alias": {"userId": "u-42", "previousId": "anon-1"},
}


def segment_request(kind: str) -> dict[str, Any]:
    if kind == "batch":
        example: dict[str, Any] = {
            "batch": [
                {"type": k, **v} for k, v in _SEGMENT_EXAMPLES.items() if k in ("group", "track")
            ],
            "context": {"library": {"name": "analytics-python"}},
            "sentAt": "2026-11-20T09:30:01Z",
        }
        schema = _ref("SegmentBatch")
    else:
        example = _SEGMENT_EXAMPLES[kind]
        schema = _ref("SegmentMessage")
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema, "examples": {kind: {"value": example}}}
            },
        }
    }


_MODELS: tuple[type[BaseModel], ...] = (
    EventsBody,
    SegmentBatch,
    SegmentMessage,
    Accepted,
    EventError,
    EventErrors,
    SegmentRejected,
    SegmentAnswer,
    Detail,
)


def install(app: FastAPI) -> None:
    """Generate the schema with the body models added to ``components/schemas``."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in _MODELS:
            js = model.model_json_schema(ref_template=_REF, mode="validation")
            components.update(js.pop("$defs", {}))
            components[model.__name__] = js
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
