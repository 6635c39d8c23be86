"""The event catalogue (SPEC §3.1): what is accepted, what is refused and why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import get_args

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from shared.events import (
    EVENT_LIST_ADAPTER,
    NUL_MESSAGE,
    Event,
    Login,
    WireError,
    contains_nul,
    decode_event,
    encode_event,
    may_contain_nul,
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
        ("score",),
        "score_range",
        id="csat-range",
    ),
    pytest.param(
        {
            "type": "survey_response",
            "account_id": "a",
            "survey": "nps",
            "score": 11,
            "contact_id": "c",
        },
        ("score",),
        "score_range",
        id="nps-range",
    ),
    pytest.param(
        {"type": "survey_response", "account_id": "a", "survey": "nps", "score": 9},
        ("contact_id",),
        "missing_one_of",
        id="survey-nobody",
    ),
]


@pytest.mark.parametrize(("event", "field", "kind"), INVALID)
def test_invalid_events_name_the_field(
    event: dict[str, object], field: tuple[str, ...], kind: str
) -> None:
    errors = _errors([event])
    assert ((0, event["type"], *field), kind) in errors


# One valid event per type with every text field of the catalogue set (ids, names,
# free text), and those fields: each of them carries the NUL rule.
WITH_EVERY_TEXT: dict[str, dict[str, object]] = {
    "login": {"user_id": "u"},
    "feature_used": {"user_id": "u", "feature": "export"},
    "session": {"user_id": "u", "duration_seconds": 5},
    "account_updated": {"name": "Acme", "plan": "pro", "csm": "kim"},
    "communication": {
        "channel": "email",
        "direction": "inbound",
        "contact_id": "c",
        "subject": "Renewal",
    },
    "contact_updated": {"contact_id": "c", "name": "Ann", "email": "ann@example.com"},
    "survey_response": {
        "survey": "nps",
        "score": 9,
        "contact_id": "c",
        "user_id": "u",
        "comment": "fine",
    },
}
TEXT_FIELDS: dict[str, list[str]] = {
    "login": ["user_id"],
    "feature_used": ["user_id", "feature"],
    "session": ["user_id"],
    "account_updated": ["name", "plan", "csm"],
    "communication": ["contact_id", "subject"],
    "contact_updated": ["contact_id", "name", "email"],
    "survey_response": ["contact_id", "user_id", "comment"],
}
NUL_CASES = [
    pytest.param(t, f, id=f"{t}.{f}")
    for t, fields in TEXT_FIELDS.items()
    for f in ["id", "account_id", *fields]
]


def _text_fields(model: type[BaseModel]) -> set[str]:
    """The fields of ``model`` that hold free text (``str``, not an enum or literal)."""

    def is_text(annotation: object) -> bool:
        return annotation is str or any(is_text(a) for a in get_args(annotation))

    return {n for n, info in model.model_fields.items() if is_text(info.annotation)}


def test_the_nul_cases_cover_every_text_field_of_the_catalogue() -> None:
    """A text field added to the catalogue shows up here, so the rule is tested on it."""
    covered = {(p.values[0], p.values[1]) for p in NUL_CASES}
    models = get_args(get_args(Event)[0])
    every = {
        (get_args(m.model_fields["type"].annotation)[0], f) for m in models for f in _text_fields(m)
    }
    assert covered == every


@pytest.mark.parametrize(("kind", "field"), NUL_CASES)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_nul_in_any_text_field_is_refused_and_named(kind: str, field: str, where: str) -> None:
    """PostgreSQL text cannot hold U+0000: an event carrying one anywhere would be
    accepted by ingest and then dead-lettered by scoring, so the schema refuses it."""
    event: dict[str, object] = {"type": kind, "account_id": "a", **WITH_EVERY_TEXT[kind]}
    EVENT_LIST_ADAPTER.validate_json(orjson.dumps([event]))  # valid as it is
    value = {"start": "\x00x", "middle": "x\x00y", "end": "x\x00"}[where]
    with pytest.raises(ValidationError) as info:
        EVENT_LIST_ADAPTER.validate_json(orjson.dumps([{**event, field: value}]))
    [error] = info.value.errors()
    assert (error["loc"], error["type"], error["msg"]) == (
        (0, kind, field),
        "string_nul",
        "must not contain a NUL character (U+0000)",
    )


def test_text_that_merely_spells_the_escape_is_not_a_nul() -> None:
    """A backslash followed by "u0000" is ordinary text: stored fine, so accepted."""
    raw = orjson.dumps([{"type": "login", "account_id": "a", "user_id": "\\u0000"}])
    assert b"\\\\u0000" in raw
    [event] = EVENT_LIST_ADAPTER.validate_json(raw)
    assert event.user_id == "\\u0000"


@pytest.mark.parametrize(
    ("raw", "may"),
    [
        pytest.param(b'{"a":"x\\u0000"}', True, id="escaped-nul"),
        pytest.param(b'{"a":"x\\\\u0000"}', True, id="escaped-backslash-then-u0000"),
        pytest.param(b'{"a":"x\\u0001\\n"}', False, id="other-escapes"),
        pytest.param(b'{"a":"u0000"}', False, id="no-backslash"),
    ],
)
def test_may_contain_nul_never_misses_one(raw: bytes, may: bool) -> None:
    """The hot paths' pre-test: False only when no string of the JSON can hold U+0000."""
    assert may_contain_nul(raw) is may
    has_nul = any(contains_nul(v) for v in orjson.loads(raw).values())
    assert may or not has_nul


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


def _wire(**fields: object) -> bytes:
    """A message as ingest publishes it, then altered."""
    base = {
        "id": "e1",
        "type": "login",
        "account_id": "a",
        "user_id": "u",
        "timestamp": NOW.isoformat(),
        "received_at": NOW.isoformat(),
    }
    return orjson.dumps(base | fields)


@pytest.mark.parametrize("field", ["id", "account_id", "user_id"])
def test_scoring_dead_letters_a_nul_by_the_same_rule_and_says_where(field: str) -> None:
    from services.scoring.consumer import decode  # what the scoring consumer applies

    with pytest.raises(WireError) as info:
        decode(_wire(**{field: "x\x00y"}))
    assert NUL_MESSAGE in str(info.value)
    assert f"login.{field}" in str(info.value)


def test_scoring_keeps_text_that_merely_spells_the_escape() -> None:
    """Ingest accepts a backslash followed by "u0000" (it is not a NUL), so scoring
    must not dead-letter it (SPEC §8: only what ingest would have refused)."""
    from services.scoring.consumer import decode

    event = decode(_wire(user_id="a\\u0000b"))
    assert isinstance(event, Login) and event.user_id == "a\\u0000b"


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


@pytest.mark.parametrize(
    ("timestamp", "refused"),
    [
        pytest.param(NOW + timedelta(days=500), "in the future", id="years-ahead"),
        pytest.param(NOW + timedelta(minutes=6), "in the future", id="past-the-5-minutes"),
        pytest.param(NOW - timedelta(days=401), "older than 400 days", id="too-old"),
        pytest.param(NOW + timedelta(minutes=4), None, id="within-the-5-minutes"),
        pytest.param(NOW - timedelta(days=399), None, id="399-days"),
    ],
)
def test_scoring_dead_letters_what_ingest_would_refuse_for_its_time(
    timestamp: datetime, refused: str | None
) -> None:
    """Checked against the time ingest received the event: an event dated 500 days
    ahead that reached the topic past ingest once stopped every evaluation of its
    account (its bitmap offset was out of range)."""
    from services.scoring.consumer import decode

    raw = _wire(timestamp=timestamp.isoformat())
    if refused is None:
        assert decode(raw).timestamp == timestamp
    else:
        with pytest.raises(WireError, match=refused):
            decode(raw)


def test_scoring_judges_time_by_receipt_not_by_now() -> None:
    """A consumer working through a backlog must not refuse what ingest accepted:
    an event received 2 days ago about a day 399 days before that is fine."""
    from services.scoring.consumer import decode

    received = NOW - timedelta(days=2)
    raw = _wire(
        timestamp=(received - timedelta(days=399)).isoformat(), received_at=received.isoformat()
    )
    assert decode(raw).received_at == received
