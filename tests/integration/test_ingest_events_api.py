"""POST /v1/events against the real broker and database: what is published, and
every rejection path with its exact status and body."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from services.ingest.settings import IngestSettings
from shared import db
from shared.auth import create_key
from shared.events import decode_event
from tests.ingest_helpers import AUTH, ingest_client, read_topic, settings_from

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> IngestSettings:
    return settings_from(env)


@pytest.fixture(scope="module")
async def client(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(settings) as (_app, c):
        yield c


@pytest.fixture(scope="module")
async def app(settings: IngestSettings, client: httpx.AsyncClient) -> FastAPI:
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    return transport.app  # type: ignore[return-value]


def iso(dt: datetime) -> str:
    return dt.isoformat()


NOW = datetime.now(UTC)


def login(account: str, **over: Any) -> dict[str, Any]:
    return {"type": "login", "account_id": account, "user_id": "u1", **over}


async def post(client: httpx.AsyncClient, body: Any, **kw: Any) -> httpx.Response:
    headers = {**AUTH, "Content-Type": "application/json", **kw.pop("headers", {})}
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return await client.post("/v1/events", content=content, headers=headers, **kw)


async def test_every_event_type_is_published_to_its_topic_keyed_by_account(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    account = "acct-all-types"
    ts = NOW - timedelta(hours=2)
    events = [
        {"id": "all-1", **login(account), "timestamp": iso(ts)},
        {
            "id": "all-2",
            "type": "feature_used",
            "account_id": account,
            "user_id": "u1",
            "feature": "reports",
            "count": 3,
        },
        {
            "id": "all-3",
            "type": "session",
            "account_id": account,
            "user_id": "u1",
            "duration_seconds": 120.5,
        },
        {"id": "all-4", "type": "account_updated", "account_id": account, "seats_purchased": 50},
        {
            "id": "all-5",
            "type": "communication",
            "account_id": account,
            "channel": "email",
            "direction": "inbound",
            "contact_id": "c1",
            "sentiment": -0.5,
            "escalation": True,
            "subject": "help",
        },
        {
            "id": "all-6",
            "type": "contact_updated",
            "account_id": account,
            "contact_id": "c1",
            "role": "champion",
            "left_company": False,
        },
        {
            "id": "all-7",
            "type": "survey_response",
            "account_id": account,
            "survey": "nps",
            "score": 9,
            "user_id": "u1",
            "comment": "great",
        },
    ]
    r = await post(client, {"events": events})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 7}

    product = [
        m
        for m in await read_topic(
            settings.kafka_bootstrap_servers, settings.topics.product, at_least=4
        )
        if m["account_id"] == account
    ]
    comm = [
        m
        for m in await read_topic(
            settings.kafka_bootstrap_servers, settings.topics.communication, at_least=3
        )
        if m["account_id"] == account
    ]
    assert sorted(m["id"] for m in product) == ["all-1", "all-2", "all-3", "all-4"]
    assert sorted(m["id"] for m in comm) == ["all-5", "all-6", "all-7"]
    assert {m["_key"] for m in product + comm} == {account}
    assert len({m["_partition"] for m in product}) == 1  # one account → one partition
    for m in product + comm:
        raw = orjson.dumps({k: v for k, v in m.items() if not k.startswith("_")})
        event = decode_event(raw)
        assert event.received_at is not None
    by_id = {m["id"]: m for m in product + comm}
    assert datetime.fromisoformat(by_id["all-1"]["timestamp"]) == ts.replace(
        microsecond=ts.microsecond
    )
    # a partial update stays partial: only the fields the client set
    assert set(by_id["all-4"]) - {"_key", "_partition"} == {
        "id",
        "type",
        "account_id",
        "seats_purchased",
        "timestamp",
        "received_at",
    }
    assert by_id["all-2"]["count"] == 3 and by_id["all-5"]["sentiment"] == -0.5


async def test_ids_are_assigned_and_clock_skew_is_corrected(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    account = "acct-skew"
    # the client's clock is one hour behind: it says it sent "now - 1h"
    client_now = datetime.now(UTC) - timedelta(hours=1)
    happened = client_now - timedelta(minutes=10)
    body = {
        "events": [login(account, timestamp=iso(happened), sent_at=iso(client_now)), login(account)]
    }
    before = datetime.now(UTC)
    r = await post(client, body)
    after = datetime.now(UTC)
    assert r.status_code == 202, r.text
    got = [
        m
        for m in await read_topic(
            settings.kafka_bootstrap_servers, settings.topics.product, at_least=2
        )
        if m["account_id"] == account
    ]
    assert len(got) == 2
    assert all(len(m["id"]) == 36 for m in got)  # server-assigned UUIDs
    assert got[0]["id"] != got[1]["id"]
    assert all("sent_at" not in m for m in got)
    corrected = sorted(datetime.fromisoformat(m["timestamp"]) for m in got)
    # the skewed event lands ~10 minutes before receipt, not 70
    assert before - timedelta(minutes=10, seconds=1) <= corrected[0] <= after - timedelta(minutes=9)
    assert before <= corrected[1] <= after  # defaulted to receipt time


async def test_gzip_body_is_accepted(client: httpx.AsyncClient) -> None:
    body = gzip.compress(orjson.dumps({"events": [login("acct-gzip")]}))
    r = await post(client, body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1}


FUTURE = iso(NOW + timedelta(minutes=30))
ANCIENT = iso(NOW - timedelta(days=401))


@pytest.mark.parametrize(
    ("event", "field", "message"),
    [
        pytest.param(
            {"account_id": "a", "user_id": "u"}, "type", "missing event type", id="no-type"
        ),
        pytest.param(
            {"type": "logout", "account_id": "a"},
            "type",
            "unknown event type; expected one of: login, feature_used, session, account_updated, "
            "communication, contact_updated, survey_response",
            id="unknown-type",
        ),
        pytest.param(
            {"type": "login", "user_id": "u"}, "account_id", "Field required", id="no-account"
        ),
        pytest.param(
            {"type": "login", "account_id": "", "user_id": "u"},
            "account_id",
            "String should have at least 1 character",
            id="empty-account",
        ),
        pytest.param(
            {"type": "login", "account_id": "a" * 129, "user_id": "u"},
            "account_id",
            "String should have at most 128 characters",
            id="long-account",
        ),
        pytest.param(
            {"type": "login", "account_id": "a", "user_id": "u", "extra": 1},
            "extra",
            "Extra inputs are not permitted",
            id="unknown-field",
        ),
        pytest.param(
            {"type": "login", "account_id": "a", "user_id": 5},
            "user_id",
            "Input should be a valid string",
            id="user-id-type",
        ),
        pytest.param(
            {"type": "login", "account_id": "a", "user_id": "u", "timestamp": "yesterday"},
            "timestamp",
            "Input should be a valid datetime, input is too short",
            id="timestamp-garbage",
        ),
        pytest.param(
            {
                "type": "login",
                "account_id": "a",
                "user_id": "u",
                "timestamp": "2026-01-01T00:00:00",
            },
            "timestamp",
            "Input should have timezone info",
            id="timestamp-naive",
        ),
        pytest.param(
            {"type": "login", "account_id": "a", "user_id": "u", "timestamp": FUTURE},
            "timestamp",
            "timestamp is more than 5 minutes in the future",
            id="future",
        ),
        pytest.param(
            {
                "type": "login",
                "account_id": "a",
                "user_id": "u",
                "timestamp": "9999-12-31T00:00:00Z",
                "sent_at": "0001-01-01T00:00:00Z",
            },
            "sent_at",
            "sent_at is too far from the time of receipt",
            id="skew-overflow",
        ),
        pytest.param(
            {"type": "login", "account_id": "a", "user_id": "u", "timestamp": ANCIENT},
            "timestamp",
            "timestamp is older than 400 days",
            id="too-old",
        ),
        pytest.param(
            {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "f", "count": 0},
            "count",
            "Input should be greater than or equal to 1",
            id="count-zero",
        ),
        pytest.param(
            {
                "type": "feature_used",
                "account_id": "a",
                "user_id": "u",
                "feature": "f",
                "count": "2",
            },
            "count",
            "Input should be a valid integer",
            id="count-string",
        ),
        pytest.param(
            {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "f" * 129},
            "feature",
            "String should have at most 128 characters",
            id="feature-long",
        ),
        pytest.param(
            {"type": "session", "account_id": "a", "user_id": "u", "duration_seconds": 0},
            "duration_seconds",
            "Input should be greater than 0",
            id="session-zero",
        ),
        pytest.param(
            {"type": "session", "account_id": "a", "user_id": "u", "duration_seconds": 86401},
            "duration_seconds",
            "Input should be less than or equal to 86400",
            id="session-long",
        ),
        pytest.param(
            {"type": "account_updated", "account_id": "a"},
            None,
            "account_updated needs at least one of: arr, csm, lifecycle_stage, name, "
            "onboarding_completed_at, plan, renewal_date, seats_purchased",
            id="account-updated-empty",
        ),
        pytest.param(
            {"type": "account_updated", "account_id": "a", "seats_purchased": -1},
            "seats_purchased",
            "Input should be greater than or equal to 0",
            id="seats-negative",
        ),
        pytest.param(
            {"type": "account_updated", "account_id": "a", "lifecycle_stage": "zombie"},
            "lifecycle_stage",
            "Input should be 'trial', 'poc', 'onboarding', 'active' or 'churned'",
            id="lifecycle-stage",
        ),
        pytest.param(
            {
                "type": "communication",
                "account_id": "a",
                "channel": "fax",
                "direction": "inbound",
                "contact_id": "c",
            },
            "channel",
            "Input should be 'email', 'meeting', 'call', 'chat', 'support_ticket', "
            "'marketing' or 'in_app'",
            id="channel",
        ),
        pytest.param(
            {
                "type": "communication",
                "account_id": "a",
                "channel": "email",
                "direction": "sideways",
                "contact_id": "c",
            },
            "direction",
            "Input should be 'inbound' or 'outbound'",
            id="direction",
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
            "sentiment",
            "Input should be less than or equal to 1",
            id="sentiment",
        ),
        pytest.param(
            {
                "type": "communication",
                "account_id": "a",
                "channel": "email",
                "direction": "inbound",
                "contact_id": "c",
                "escalation": "yes",
            },
            "escalation",
            "Input should be a valid boolean",
            id="escalation",
        ),
        pytest.param(
            {"type": "contact_updated", "account_id": "a", "contact_id": "c", "role": "boss"},
            "role",
            "Input should be 'champion', 'decision_maker', 'executive_sponsor', 'user' or 'other'",
            id="role",
        ),
        pytest.param(
            {
                "type": "survey_response",
                "account_id": "a",
                "survey": "nps",
                "score": 11,
                "user_id": "u",
            },
            "score",
            "score must be between 0 and 10 for a nps survey",
            id="nps-range",
        ),
        pytest.param(
            {
                "type": "survey_response",
                "account_id": "a",
                "survey": "csat",
                "score": 0,
                "user_id": "u",
            },
            "score",
            "score must be between 1 and 5 for a csat survey",
            id="csat-range",
        ),
        pytest.param(
            {"type": "survey_response", "account_id": "a", "survey": "nps", "score": 5},
            "contact_id",
            "survey_response needs contact_id or user_id",
            id="survey-who",
        ),
        pytest.param(
            "login",
            None,
            "Input should be an object",
            id="not-object",
        ),
    ],
)
async def test_each_invalid_field_is_reported_and_nothing_published(
    client: httpx.AsyncClient, event: Any, field: str | None, message: str
) -> None:
    good = login("acct-good-neighbour")
    r = await post(client, {"events": [good, event]})
    assert r.status_code == 422, r.text
    assert r.json() == {"errors": [{"index": 1, "field": field, "message": message}]}


NUL = "must not contain a NUL character (U+0000)"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param(login("x\u0000y"), "account_id", id="account_id"),
        pytest.param(login("a", user_id="\u0000"), "user_id", id="user_id"),
        pytest.param(login("a", id="evt-\u0000"), "id", id="id"),
        pytest.param(
            {"type": "feature_used", "account_id": "a", "user_id": "u", "feature": "a\u0000b"},
            "feature",
            id="feature",
        ),
        pytest.param(
            {"type": "account_updated", "account_id": "a", "plan": "pro", "csm": "k\u0000"},
            "csm",
            id="account-csm",
        ),
        pytest.param(
            {
                "type": "communication",
                "account_id": "a",
                "channel": "email",
                "direction": "inbound",
                "contact_id": "c",
                "subject": "Re: \u0000",
            },
            "subject",
            id="subject",
        ),
        pytest.param(
            {"type": "contact_updated", "account_id": "a", "contact_id": "c", "email": "\u0000@x"},
            "email",
            id="contact-email",
        ),
        pytest.param(
            {
                "type": "survey_response",
                "account_id": "a",
                "survey": "nps",
                "score": 9,
                "user_id": "u",
                "comment": "great\u0000",
            },
            "comment",
            id="survey-comment",
        ),
    ],
)
async def test_a_nul_in_any_text_is_422_with_the_field(
    client: httpx.AsyncClient, event: dict[str, Any], field: str
) -> None:
    """PostgreSQL text cannot hold U+0000: scoring would dead-letter such an event, so
    ingest must refuse it (SPEC §8) — precisely, like any other invalid field."""
    r = await post(client, {"events": [login("acct-good-neighbour"), event]})
    assert r.status_code == 422, r.text
    assert r.json() == {"errors": [{"index": 1, "field": field, "message": NUL}]}


async def test_text_that_spells_the_nul_escape_is_not_a_nul_and_is_accepted(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    """A backslash followed by "u0000" is ordinary text, not a NUL: accepted and
    published unchanged, and scoring's decoder (the same rule) takes it too."""
    event = login("acct-nul-lookalike", id="lookalike-1", user_id="a\\u0000b")
    r = await post(client, {"events": [event]})
    assert r.status_code == 202, r.text
    published = await read_topic(settings.kafka_bootstrap_servers, settings.topics.product)
    [m] = [m for m in published if m["account_id"] == "acct-nul-lookalike"]
    assert m["user_id"] == "a\\u0000b"
    raw = orjson.dumps({k: v for k, v in m.items() if not k.startswith("_")})
    assert decode_event(raw).id == "lookalike-1"


async def test_every_invalid_event_is_listed_and_none_is_published(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    account = "acct-all-or-nothing"
    events = [
        login(account, id="aon-1"),
        {"type": "login", "account_id": account, "id": "aon-2"},
        login(account, id="aon-3"),
        login(account, id="aon-4", timestamp=FUTURE),
        {"type": "feature_used", "account_id": account, "user_id": "u", "id": "aon-5"},
    ]
    r = await post(client, {"events": events})
    assert r.status_code == 422
    assert r.json() == {
        "errors": [
            {"index": 1, "field": "user_id", "message": "Field required"},
            {"index": 4, "field": "feature", "message": "Field required"},
        ]
    }
    # timestamp problems are found once the schema passes; also all of them
    events[1]["user_id"] = "u"
    events[4]["feature"] = "f"
    events.append(login(account, id="aon-6", timestamp=ANCIENT))
    r = await post(client, {"events": events})
    assert r.status_code == 422
    assert r.json() == {
        "errors": [
            {
                "index": 3,
                "field": "timestamp",
                "message": "timestamp is more than 5 minutes in the future",
            },
            {"index": 5, "field": "timestamp", "message": "timestamp is older than 400 days"},
        ]
    }
    published = await read_topic(settings.kafka_bootstrap_servers, settings.topics.product)
    assert [m for m in published if m["account_id"] == account] == []


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        pytest.param({"events": []}, "events", "send 1 to 2500 events", id="empty"),
        pytest.param({"events": {}}, "events", "events must be a list of events", id="not-list"),
        pytest.param({}, "events", "events must be a list of events", id="missing"),
        pytest.param([], None, 'the body must be a JSON object {"events": [...]}', id="array"),
        pytest.param(
            {"events": [login("a")], "more": 1},
            "more",
            "Extra inputs are not permitted",
            id="extra",
        ),
    ],
)
async def test_body_shape_problems_are_422(
    client: httpx.AsyncClient, body: Any, field: str | None, message: str
) -> None:
    r = await post(client, body)
    assert r.status_code == 422
    assert r.json() == {"errors": [{"index": None, "field": field, "message": message}]}


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await post(client, b'{"events": [')
    assert r.status_code == 400
    assert r.json()["detail"].startswith("the body is not valid JSON: ")


async def test_broken_gzip_is_400(client: httpx.AsyncClient) -> None:
    r = await post(client, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("the body is not valid gzip: ")
    truncated = gzip.compress(orjson.dumps({"events": [login("a")]}))[:-12]
    r = await post(client, truncated, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert r.json() == {"detail": "the body is not valid gzip: the stream is truncated"}


async def test_too_many_events_is_413(client: httpx.AsyncClient) -> None:
    r = await post(client, {"events": [login("a")] * 2501})
    assert r.status_code == 413
    assert r.json() == {"detail": "2501 events in one request; the limit is 2500"}


async def test_event_over_32_kib_is_413(client: httpx.AsyncClient) -> None:
    big = login("a", user_id="x" * 40_000)
    r = await post(client, {"events": [login("a"), big]})
    assert r.status_code == 413
    size = len(orjson.dumps(big))
    assert r.json() == {"detail": f"event 1 is {size} bytes; the limit is 32768 bytes (32 KiB)"}


async def test_body_over_512_kib_is_413(client: httpx.AsyncClient) -> None:
    body = orjson.dumps({"events": [login("a" * 128, user_id="u" * 128, id="i" * 128)] * 2400})
    assert len(body) > 512 * 1024
    r = await post(client, body)
    assert r.status_code == 413
    assert r.json() == {"detail": "the body is larger than the limit of 524288 bytes (512 KiB)"}


async def test_body_over_the_limit_without_content_length_is_cut_off(
    client: httpx.AsyncClient,
) -> None:
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(10_000):  # 640 MiB if it were read whole
            sent += 1
            yield b" " * 65536

    r = await client.post(
        "/v1/events", content=stream(), headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json() == {"detail": "the body is larger than the limit of 524288 bytes (512 KiB)"}


async def test_gzip_bomb_is_413(client: httpx.AsyncClient) -> None:
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MiB of spaces in ~64 KiB
    assert len(bomb) < 512 * 1024
    r = await post(client, bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert r.json() == {
        "detail": "the uncompressed body is larger than the limit of 524288 bytes (512 KiB)"
    }


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param(
            {"Content-Type": "text/csv"},
            "Content-Type must be application/json (got text/csv)",
            id="csv",
        ),
        pytest.param(
            {"Content-Type": "application/x-www-form-urlencoded"},
            "Content-Type must be application/json (got application/x-www-form-urlencoded)",
            id="form",
        ),
        pytest.param(
            {"Content-Type": "text/plain"},
            "Content-Type must be application/json (got text/plain)",
            id="text-plain-native",
        ),
        pytest.param(
            {"Content-Type": "application/json", "Content-Encoding": "br"},
            "Content-Encoding must be gzip or identity (got br)",
            id="brotli",
        ),
    ],
)
async def test_wrong_content_type_is_415(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    r = await client.post(
        "/v1/events", content=orjson.dumps({"events": [login("a")]}), headers={**AUTH, **headers}
    )
    assert r.status_code == 415
    assert r.json() == {"detail": message}


async def test_missing_content_type_is_415(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/events", content=b"{}", headers=AUTH)
    assert r.status_code == 415
    assert r.json() == {"detail": "Content-Type must be application/json (got nothing)"}


async def test_auth_401_and_403(client: httpx.AsyncClient, settings: IngestSettings) -> None:
    body = orjson.dumps({"events": [login("a")]})
    json_ct = {"Content-Type": "application/json"}
    r = await client.post("/v1/events", content=body, headers=json_ct)
    assert r.status_code == 401
    assert r.json() == {"detail": "missing API key: send Authorization: Bearer <key>"}
    assert r.headers["WWW-Authenticate"] == 'Bearer realm="healthscore"'
    r = await client.post(
        "/v1/events", content=body, headers={**json_ct, "Authorization": "Bearer hs_nope"}
    )
    assert r.status_code == 401
    assert r.json() == {"detail": "unknown or revoked API key"}
    engine = db.create_engine(settings.database_url)
    try:
        _id, read_only = await create_key(engine, "reader", ["read"])
        _id, ingest = await create_key(engine, "writer", ["ingest"])
    finally:
        await engine.dispose()
    r = await client.post(
        "/v1/events", content=body, headers={**json_ct, "Authorization": f"Bearer {read_only}"}
    )
    assert r.status_code == 403
    assert r.json() == {"detail": "this API key lacks the 'ingest' scope"}
    basic = httpx.BasicAuth(ingest, "")
    r = await client.post("/v1/events", content=body, headers=json_ct, auth=basic)
    assert r.status_code == 202, r.text


async def test_rate_limited_key_gets_429_with_retry_after(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    engine = db.create_engine(settings.database_url)
    try:
        _id, limited = await create_key(engine, "slow", ["ingest"], rate_limit_per_second=0.01)
        _id, free = await create_key(engine, "fast", ["ingest"])
    finally:
        await engine.dispose()
    body = orjson.dumps({"events": [login("acct-rate")]})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {limited}"}
    first = await client.post("/v1/events", content=body, headers=headers)
    assert first.status_code == 202, first.text
    second = await client.post("/v1/events", content=body, headers=headers)
    assert second.status_code == 429
    assert second.json() == {
        "detail": "rate limit of 0.01 requests per second exceeded for this API key"
    }
    assert 1 <= int(second.headers["Retry-After"]) <= 100
    # keys without a limit are not affected
    for _ in range(5):
        r = await client.post(
            "/v1/events", content=body, headers={**headers, "Authorization": f"Bearer {free}"}
        )
        assert r.status_code == 202


def _metric(text: str, type_: str, outcome: str) -> float:
    needle = f'healthscore_ingest_events_total{{outcome="{outcome}",type="{type_}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle) :])
    return 0.0


async def test_events_are_counted_by_type_and_outcome(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    r = await post(client, {"events": [login("acct-m"), login("acct-m")]})
    assert r.status_code == 202
    r = await post(client, {"events": [login("acct-m"), {"type": "bogus", "account_id": "x"}]})
    assert r.status_code == 422
    after = (await client.get("/metrics")).text
    assert _metric(after, "login", "accepted") - _metric(before, "login", "accepted") == 2
    assert _metric(after, "login", "rejected") - _metric(before, "login", "rejected") == 1
    assert _metric(after, "unknown", "rejected") - _metric(before, "unknown", "rejected") == 1


async def test_openapi_documents_every_route_with_a_request_body(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    routes = ["events", "batch", "import", "track", "identify", "group", "page", "screen", "alias"]
    for name in routes:
        op = spec["paths"][f"/v1/{name}"]["post"]
        body = op["requestBody"]["content"]["application/json"]
        assert body["examples"], name
        ref = body["schema"]["$ref"].rpartition("/")[2]
        assert ref in spec["components"]["schemas"], name
        assert {"401", "413", "415", "503"} <= set(op["responses"]), name
    assert "Login" in spec["components"]["schemas"]
    assert "SurveyResponse" in spec["components"]["schemas"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
