"""Pure parts of ingest: bounded body reading, rate limiting maths, validation results."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.rate_limit import RateLimiter, TokenBucket, retry_after_header
from services.ingest.request_body import BodyTooLarge, BodyUnreadable, read_all
from services.ingest.validation import Outgoing, validate_events
from shared.events import EVENT_TYPES, NUL_MESSAGE, Login, decode_event, encode_event, normalise


def test_plain_body_under_the_limit_is_joined() -> None:
    assert read_all([b"ab", b"cd"], 4) == b"abcd"


def test_plain_body_over_the_limit_is_refused_at_the_chunk_that_passes_it() -> None:
    with pytest.raises(BodyTooLarge, match="limit of 4 bytes"):
        read_all([b"ab", b"cde"], 4)


def test_gzip_body_is_inflated() -> None:
    assert read_all([gzip.compress(b"x" * 1000)], 1000, gzip=True) == b"x" * 1000


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))
    with pytest.raises(BodyTooLarge, match="uncompressed body"):
        read_all([bomb[i : i + 4096] for i in range(0, len(bomb), 4096)], 1024, gzip=True)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"plain text", id="not-gzip"),
        pytest.param(gzip.compress(b"hello")[:-4], id="truncated"),
    ],
)
def test_broken_gzip_is_unreadable(data: bytes) -> None:
    with pytest.raises(BodyUnreadable):
        read_all([data], 1000, gzip=True)


def test_token_bucket_allows_burst_then_waits() -> None:
    bucket = TokenBucket(rate=2.0, capacity=2.0, tokens=2.0, updated=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0  # refilled one token in half a second


def test_rate_limiter_ignores_keys_without_a_limit_and_tracks_per_key() -> None:
    limiter = RateLimiter()
    assert all(limiter.check("free", None, 0.0) == 0.0 for _ in range(100))
    assert limiter.check("a", 1.0, 0.0) == 0.0
    assert limiter.check("a", 1.0, 0.1) == pytest.approx(0.9)
    assert limiter.check("b", 1.0, 0.1) == 0.0
    assert limiter.check("a", 1.0, 1.0) == 0.0


@pytest.mark.parametrize(("wait", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (99.5, "100")])
def test_retry_after_is_whole_seconds_at_least_one(wait: float, header: str) -> None:
    assert retry_after_header(wait) == header


def test_published_message_equals_the_shared_encoder() -> None:
    """What ingest writes is what encode_event(normalise(event)) writes."""
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    event = {
        "type": "login",
        "account_id": "a",
        "user_id": "u",
        "timestamp": "2026-11-20T13:00:00+02:00",
        "sent_at": "2026-11-20T13:30:00+02:00",
    }
    messages, problems, _ = validate_events(
        orjson.dumps({"events": [event]}), now=now, new_id=lambda: "id-1"
    )
    assert problems == []
    (msg,) = messages
    assert isinstance(msg, Outgoing) and msg.key == b"a" and msg.topic == "product"
    expected = normalise(Login.model_validate(event), received_at=now, new_id="id-1")
    assert decode_event(msg.value) == decode_event(encode_event(expected))
    assert decode_event(msg.value).timestamp == now - timedelta(minutes=30)


@pytest.mark.parametrize(
    ("offset", "problem"),
    [
        pytest.param(timedelta(minutes=4, seconds=59), None, id="just-in-future-ok"),
        pytest.param(timedelta(minutes=5, seconds=1), "future", id="just-too-far-ahead"),
        pytest.param(timedelta(minutes=5, microseconds=500_000), "future", id="same-second-ahead"),
        pytest.param(-timedelta(days=399, hours=23), None, id="old-but-ok"),
        pytest.param(-timedelta(days=400, seconds=1), "older", id="too-old"),
        pytest.param(timedelta(0), None, id="now"),
    ],
)
@pytest.mark.parametrize("form", ["Z", "+00:00", "+02:00"])
def test_time_window_boundaries_whatever_the_format(
    offset: timedelta, problem: str | None, form: str
) -> None:
    from zoneinfo import ZoneInfo

    from services.ingest.validation import Receipt

    now = datetime(2026, 11, 20, 12, 0, 0, 250_000, tzinfo=UTC)
    ts = now + offset
    if form == "+02:00":
        ts = ts.astimezone(ZoneInfo("Africa/Cairo"))
    text = ts.isoformat().replace("+00:00", form if form != "+02:00" else "+00:00")
    receipt = Receipt.at(now)
    utc_text = text if form != "+02:00" else None
    got = receipt.time_problem(ts, utc_text)
    assert (got is None) == (problem is None)
    if problem:
        assert got is not None and problem in got


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 12),
    st.floats(-2, 90_000, allow_nan=False),
    st.sampled_from(
        [
            "",
            "x",
            "email",
            "inbound",
            "champion",
            "nps",
            "csat",
            "trial",
            "2026-11-20",
            "2026-11-20T10:00:00Z",
            "2026-11-20T10:00:00",
            "x" * 300,
            "a\x00b",  # NUL: refused by the models, so by the fast paths too
        ]
    ),
)
_field_names = [
    "id", "user_id", "feature", "count", "duration_seconds", "name", "seats_purchased",
    "lifecycle_stage", "plan", "arr", "renewal_date", "csm", "channel", "direction",
    "contact_id", "sentiment", "escalation", "subject", "role", "email", "left_company",
    "survey", "score", "comment", "onboarding_completed_at", "timestamp", "sent_at", "bogus",
]  # fmt: skip
_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from([*EVENT_TYPES, "nope"]),
        "account_id": st.sampled_from(["a", "", "\x00"]),
    },
    optional={f: _values for f in _field_names},
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_events, min_size=1, max_size=3))
def test_fast_validation_accepts_exactly_what_the_catalogue_models_accept(
    events: list[dict[str, object]],
) -> None:
    """The TypedDict fast path is generated from the models; it must never let
    through an event the models refuse (nor refuse one they accept)."""
    from pydantic import ValidationError

    from services.ingest.validation import _BODY_ADAPTER, _MODEL_CHECKED, _MODELS_BODY_ADAPTER

    body = orjson.dumps({"events": events})
    try:
        _MODELS_BODY_ADAPTER.validate_json(body, strict=True)
        models_ok = True
    except ValidationError:
        models_ok = False
    try:
        for e in _BODY_ADAPTER.validate_json(body, strict=True)["events"]:
            model = _MODEL_CHECKED.get(e["type"])
            if model is not None:
                model.model_validate(e)
        fast_ok = True
    except ValidationError:
        fast_ok = False
    assert fast_ok == models_ok


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"sent_at": "2026-11-20T11:00:00Z"}, id="sent-at-without-timestamp"),
        pytest.param({"timestamp": "2026-11-20T11:00:00Z", "sent_at": None}, id="null-sent-at"),
        pytest.param({"timestamp": "2026-11-20T13:00:00+02:00"}, id="offset"),
        pytest.param({"id": None}, id="null-id"),
    ],
)
def test_odd_but_valid_events_are_published_as_the_shared_encoder_would(
    extra: dict[str, object],
) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    event = {"type": "login", "account_id": "a", "user_id": "u", **extra}
    messages, problems, _ = validate_events(
        orjson.dumps({"events": [event]}), now=now, new_id=lambda: "id-1"
    )
    assert problems == []
    published = orjson.loads(messages[0].value)
    assert "sent_at" not in published
    expected = normalise(Login.model_validate(event), received_at=now, new_id="id-1")
    assert decode_event(messages[0].value) == decode_event(encode_event(expected))


def test_partition_choice_matches_kafkas_default_partitioner() -> None:
    """One account always lands where any Kafka client with the default
    partitioner would put it (murmur2 of the key)."""
    from aiokafka.partitioner import DefaultPartitioner

    from shared.kafka import partition_of  # what the ingest publisher partitions by

    partitions = list(range(12))
    for i in range(500):
        key = f"account-{i}".encode()
        expected = DefaultPartitioner()(key, partitions, partitions)
        assert partitions[partition_of(key, len(partitions))] == expected


_NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)  # window: 2025-05-11 … 2026-06-15T12:05
_STAMP = "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format
_fractions = st.sampled_from(["", ".1", ".123456", ".1234567", "."])
_suffixes = st.sampled_from(["Z", "+00:00", "+01:00", "-00:00", "z", ""])
_stamps = st.one_of(
    st.builds(  # anything, mostly invalid
        _STAMP,
        *(st.integers(0, 60) for _ in range(5)),
        st.integers(0, 60),
        _fractions,
        _suffixes,
    ).map(lambda s: s.replace("0000-", "2026-", 1)),
    st.builds(  # near the window and the ends of months
        _STAMP,
        st.sampled_from([0, 2024, 2025, 2026, 2027]),
        st.integers(0, 13),
        st.one_of(st.integers(0, 32), st.integers(27, 31)),
        st.integers(0, 24),
        st.integers(0, 60),
        st.integers(0, 60),
        _fractions,
        _suffixes,
    ),
    st.builds(  # valid-looking, inside the window's years
        _STAMP,
        st.sampled_from([2025, 2026]),
        st.integers(1, 12),
        st.integers(27, 31),
        st.integers(0, 23),
        st.integers(0, 59),
        st.integers(0, 59),
        st.sampled_from(["", ".1", ".123456"]),
        st.sampled_from(["Z", "+00:00"]),
    ),
)


@settings(max_examples=1500, deadline=None)
@given(_stamps)
def test_the_express_path_takes_only_timestamps_the_models_accept_and_keeps_their_meaning(
    stamp: str,
) -> None:
    """The express path checks timestamps with a regex and a string comparison
    instead of parsing them: whatever it takes must be a valid time inside the
    window, published as the shared encoder would publish it."""
    from services.ingest.validation import Receipt, _express

    event = {"type": "login", "account_id": "a", "user_id": "u", "timestamp": stamp}
    body = orjson.dumps({"events": [event]})
    express = _express(body, Receipt.at(_NOW), lambda: "id-1")
    messages, problems, _ = validate_events(body, now=_NOW, new_id=lambda: "id-1")
    if express is None:
        return  # the full path decided (covered by the tests above)
    assert problems == []
    assert express[0] == messages
    expected = normalise(Login.model_validate(event), received_at=_NOW, new_id="id-1")
    assert decode_event(messages[0].value) == decode_event(encode_event(expected))
    assert _NOW - timedelta(days=400) < expected.timestamp < _NOW + timedelta(minutes=5)  # type: ignore[operator]


@settings(max_examples=600, deadline=None)
@given(st.lists(_events, min_size=1, max_size=3))
def test_the_express_path_publishes_what_the_full_path_would(
    events: list[dict[str, object]],
) -> None:
    from services.ingest.validation import Receipt, _express

    for e in events:
        if isinstance(e.get("timestamp"), str):
            e["timestamp"] = "2026-06-15T11:00:00Z"  # inside the window, when a string
    body = orjson.dumps({"events": events})
    express = _express(body, Receipt.at(_NOW), lambda: "id-1")
    if express is None:
        return
    from services.ingest.validation import _MODELS_BODY_ADAPTER

    models = _MODELS_BODY_ADAPTER.validate_json(body, strict=True).events  # must not raise
    assert len(express[0]) == len(models)
    for message, model in zip(express[0], models, strict=True):
        expected = normalise(model, received_at=_NOW, new_id="id-1")
        assert decode_event(message.value) == decode_event(encode_event(expected))
        assert message.key == model.account_id.encode() and message.topic == model.topic


@pytest.mark.parametrize(
    ("extra", "express"),
    [
        pytest.param({"timestamp": "2026-06-15T11:00:00Z"}, True, id="utc-z"),
        pytest.param({"timestamp": "2026-06-15T11:00:00.123+00:00"}, True, id="utc-offset"),
        pytest.param({}, True, id="no-timestamp"),
        pytest.param({"timestamp": "2026-06-15T13:00:00+02:00"}, False, id="other-offset"),
        pytest.param({"timestamp": "2026-06-15T11:00:00Z", "sent_at": None}, False, id="sent-at"),
        pytest.param({"timestamp": "2026-02-29T11:00:00Z"}, False, id="no-such-day"),
        pytest.param({"timestamp": "2026-06-15T12:05:00Z"}, False, id="window-edge-ok"),
        pytest.param({"timestamp": "2026-06-15T12:05:00.5Z"}, False, id="window-edge-over"),
    ],
)
def test_ordinary_events_take_the_express_path_and_the_rest_the_full_one(
    extra: dict[str, object], express: bool
) -> None:
    from services.ingest.validation import Receipt, _express

    body = orjson.dumps({"events": [{"type": "login", "account_id": "a", "user_id": "u", **extra}]})
    assert (_express(body, Receipt.at(_NOW), lambda: "id-1") is not None) == express
    messages, problems, _ = validate_events(body, now=_NOW)
    if extra.get("timestamp") in ("2026-02-29T11:00:00Z", "2026-06-15T12:05:00.5Z"):
        assert [(p.index, p.field) for p in problems] == [(0, "timestamp")] and not messages
    else:
        assert problems == [] and len(messages) == 1


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"type": "login", "account_id": "x\x00y", "user_id": "u"}, id="account_id"),
        pytest.param(
            {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "a\x00b"},
            id="feature",
        ),
    ],
)
def test_a_nul_takes_the_full_path_and_is_refused_by_field(event: dict[str, object]) -> None:
    """The express models leave the NUL rule out, which is safe only because a body
    that could hold a NUL never takes the express path."""
    from services.ingest.validation import Problem, Receipt, _express

    good = {"type": "login", "account_id": "a", "user_id": "u"}
    body = orjson.dumps({"events": [good, event]})
    assert _express(body, Receipt.at(_NOW), lambda: "id-1") is None
    messages, problems, _ = validate_events(body, now=_NOW)
    field = next(f for f, v in event.items() if isinstance(v, str) and "\x00" in v)
    assert problems == [Problem(1, field, NUL_MESSAGE)] and messages == []


def test_account_updated_takes_the_full_path_and_keeps_its_dates_as_sent() -> None:
    from services.ingest.validation import Receipt, _express

    event = {
        "type": "account_updated",
        "account_id": "a",
        "renewal_date": "2027-01-31",
        "onboarding_completed_at": "2026-01-02T03:04:05.5+02:00",
    }
    body = orjson.dumps({"events": [event]})
    assert _express(body, Receipt.at(_NOW), lambda: "id-1") is None
    messages, problems, _ = validate_events(body, now=_NOW)
    assert problems == []
    published = orjson.loads(messages[0].value)
    assert published["renewal_date"] == "2027-01-31"
    assert published["onboarding_completed_at"] == "2026-01-02T03:04:05.5+02:00"
