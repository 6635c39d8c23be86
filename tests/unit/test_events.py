"""The event catalogue (SPEC §3.1): what is accepted, what is refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from pydantic import ValidationError

from shared.events import (
    EVENT_LIST_ADAPTER,
    WireError,
    decode_event,
    encode_event,
    normalise,
    time_problem,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _errors(events: list[dict[str, object]]) -> list[tuple[tuple[object, ...], str]]:
    with pytest.raises(ValidationError) as info:
        EVENT_LIST_ADAPTER.validate_json(orjson.dumps(events))
    return [(e["loc"], e["type"]) for e in info.value.errors()]


VALID = [
    pytest.param({"type": "login", "account_id": "a", "user_id": "u"}, id="login"),
    pytest.param(
        {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "export"},
        id="feature_used",
    ),
    pytest.param(
        {"type": "session", "account_id": "a", "user_id": "u", "duration_seconds": 86400},
        id="session-max",
    ),
    pytest.param(
        {"type": "account_updated", "account_id": "a", "seats_purchased": 0}, id="account_updated"
    ),
    pytest.param(
        {
            "type": "communication",
            "account_id": "a",
            "channel": "meeting",
            "direction": "inbound",
            "contact_id": "c",
            "sentiment": -1.0,
            "escalation": True,
        },
        id="communication",
    ),
    pytest.param(
        {"type": "contact_updated", "account_id": "a", "contact_id": "c", "left_company": True},
        id="contact_updated",
    ),
    pytest.param(
        {
            "type": "survey_response",
            "account_id": "a",
            "survey": "nps",
            "score": 0,
            "contact_id": "c",
        },
        id="nps-0",
    ),
    pytest.param(
        {
            "type": "survey_response",
            "account_id": "a",
            "survey": "csat",
            "score": 5,
            "user_id": "u",
        },
        id="csat-5",
    ),
]


@pytest.mark.parametrize("event", VALID)
def test_valid_events_are_accepted(event: dict[str, object]) -> None:
    [parsed] = EVENT_LIST_ADAPTER.validate_json(orjson.dumps([event]))
    assert parsed.type == event["type"]


INVALID = [
    pytest.param({"type": "login", "account_id": "a"}, ("user_id",), "missing", id="missing-user"),
    pytest.param(
        {"type": "login", "account_id": "a", "user_id": "u", "extra": 1},
        ("extra",),
        "extra_forbidden",
        id="unknown-field",
    ),
    pytest.param(
        {"type": "login", "account_id": "", "user_id": "u"},
        ("account_id",),
        "string_too_short",
        id="empty-account",
    ),
    pytest.param(
        {"type": "login", "account_id": "a" * 129, "user_id": "u"},
        ("account_id",),
        "string_too_long",
        id="long-account",
    ),
    pytest.param(
        {"type": "login", "account_id": "a", "user_id": "u", "timestamp": "2026-11-22T10:00:00"},
        ("timestamp",),
        "timezone_aware",
        id="naive-timestamp",
    ),
    pytest.param(
        {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "f", "count": 0},
        ("count",),
        "greater_than_equal",
        id="count-0",
    ),
    pytest.param(
        {"type": "session", "account_id": "a", "user_id": "u", "duration_seconds": 0},
        ("duration_seconds",),
        "greater_than",
        id="session-0",
    ),
    pytest.param(
        {"type": "session", "account_id": "a", "user_id": "u", "duration_seconds": 86401},
        ("duration_seconds",),
        "less_than_equal",
        id="session-too-long",
    ),
    pytest.param(
        {"type": "account_updated", "account_id": "a", "lifecycle_stage": "zombie"},
        ("lifecycle_stage",),
        "enum",
        id="bad-stage",
    ),
    pytest.param(
        {
            "type": "communication",
            "account_id": "a",
            "channel": "email",
            "direction": "inbound",
            "contact_id": "c",
            "sentiment": 1.5,
        },
        ("sentiment",),
        "less_than_equal",
        id="sentiment-range",
    ),
    pytest.param(
        {
            "type": "survey_response",
            "account_id": "a",
            "survey": "csat",
            "score": 0,
            "user_id": "u",
        },
        (),
        "value_error",
        id="csat-range",
    ),
]


@pytest.mark.parametrize(("event", "field", "kind"), INVALID)
def test_invalid_events_name_the_field(
    event: dict[str, object], field: tuple[str, ...], kind: str
) -> None:
    errors = _errors([event])
    assert ((0, event["type"], *field), kind) in errors


def test_unknown_type_is_refused() -> None:
    assert _errors([{"type": "teleport", "account_id": "a"}]) == [((0,), "union_tag_invalid")]


def test_empty_partial_update_is_refused() -> None:
    assert _errors([{"type": "account_updated", "account_id": "a"}]) == [
        ((0, "account_updated"), "value_error")
    ]


def test_normalise_assigns_id_timestamp_and_corrects_skew() -> None:
    [ev] = EVENT_LIST_ADAPTER.validate_json(
        orjson.dumps(
            [
                {
                    "type": "login",
                    "account_id": "a",
                    "user_id": "u",
                    # the client's clock is 10 minutes slow
                    "timestamp": "2026-11-22T11:40:00Z",
                    "sent_at": "2026-11-22T11:50:00Z",
                }
            ]
        )
    )
    out = normalise(ev, received_at=NOW, new_id="gen")
    assert out.id == "gen"
    assert out.timestamp == datetime(2026, 11, 22, 11, 50, tzinfo=UTC)
    assert out.received_at == NOW


def test_normalise_defaults_timestamp_and_keeps_client_id() -> None:
    [ev] = EVENT_LIST_ADAPTER.validate_json(
        b'[{"type":"login","account_id":"a","user_id":"u","id":"mine"}]'
    )
    out = normalise(ev, received_at=NOW, new_id="gen")
    assert (out.id, out.timestamp) == ("mine", NOW)


@pytest.mark.parametrize(
    ("offset", "problem"),
    [
        pytest.param(timedelta(minutes=6), "future", id="6min-ahead"),
        pytest.param(timedelta(minutes=4), None, id="4min-ahead"),
        pytest.param(-timedelta(days=401), "older than 400 days", id="401-days-old"),
        pytest.param(-timedelta(days=399), None, id="399-days-old"),
    ],
)
def test_time_window(offset: timedelta, problem: str | None) -> None:
    [ev] = EVENT_LIST_ADAPTER.validate_python(
        [{"type": "login", "account_id": "a", "user_id": "u", "timestamp": NOW + offset}]
    )
    found = time_problem(normalise(ev, received_at=NOW, new_id="x"), now=NOW)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_wire_round_trip_keeps_partial_updates_partial() -> None:
    [ev] = EVENT_LIST_ADAPTER.validate_json(
        b'[{"type":"account_updated","account_id":"a","csm":null,"seats_purchased":5}]'
    )
    raw = encode_event(normalise(ev, received_at=NOW, new_id="x"))
    doc = orjson.loads(raw)
    assert doc["csm"] is None and doc["seats_purchased"] == 5 and "plan" not in doc
    back = decode_event(raw)
    assert back.model_fields_set >= {"csm", "seats_purchased"}
    assert "plan" not in back.model_fields_set


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\xff\x00", id="not-json"),
        pytest.param(b'{"type":"login","account_id":"a","user_id":"u"}', id="no-id"),
        pytest.param(b'{"type":"nope"}', id="bad-schema"),
        pytest.param(None, id="tombstone"),
    ],
)
def test_decode_refuses_what_ingest_would_not_publish(raw: bytes | None) -> None:
    with pytest.raises(WireError):
        decode_event(raw)
