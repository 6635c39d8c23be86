"""The Segment-compatible endpoints against the real broker and database: the
mapping, account resolution through stored links, partial acceptance, strict mode."""

from __future__ import annotations

import base64
import gzip
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from services.ingest.settings import IngestSettings
from tests.infra import BOOTSTRAP_KEY
from tests.ingest_helpers import ingest_client, read_topic, settings_from

pytestmark = pytest.mark.asyncio(loop_scope="session")

BASIC = {"Authorization": "Basic " + base64.b64encode(f"{BOOTSTRAP_KEY}:".encode()).decode()}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> IngestSettings:
    return settings_from(env, HEALTHSCORE_SEGMENT_LOGIN_EVENTS="Logged In,Signed In,Session Start")


@pytest.fixture(scope="module")
async def client(settings: IngestSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with ingest_client(settings) as (_app, c):
        yield c


async def post(
    client: httpx.AsyncClient, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await client.post(
        path, content=orjson.dumps(body), headers={**JSON, **BASIC, **(headers or {})}
    )


async def events_of(settings: IngestSettings, prefix: str, at_least: int) -> list[dict[str, Any]]:
    """Published events whose account id starts with ``prefix`` (both topics)."""
    out = []
    for topic in settings.topics.events:
        msgs = await read_topic(settings.kafka_bootstrap_servers, topic, at_least=0, idle=0.5)
        out += [m for m in msgs if m["account_id"].startswith(prefix)]
    assert len(out) >= at_least
    return out


async def test_batch_maps_every_call_and_resolves_accounts(
    client: httpx.AsyncClient, settings: IngestSettings, database_url: str
) -> None:
    now = datetime.now(UTC)
    ts = (now - timedelta(minutes=3)).isoformat()
    batch = [
        {
            "type": "group",
            "userId": "seg-u1",
            "groupId": "seg-acme",
            "traits": {"name": "Acme", "seats": 50, "plan": "pro"},
            "messageId": "seg-m0",
            "timestamp": ts,
        },
        # resolved through the group call just before it, in the same batch
        {"type": "track", "userId": "seg-u1", "event": "Report Exported", "messageId": "seg-m1"},
        {
            "type": "track",
            "userId": "seg-u9",
            "event": "Logged In",
            "context": {"groupId": "seg-x"},
        },
        {
            "type": "track",
            "userId": "seg-u1",
            "event": "Call Ended",
            "properties": {"duration_seconds": 300, "account_id": "seg-acme"},
        },
        {"type": "page", "anonymousId": "anon-7", "properties": {"account_id": "seg-acme"}},
        {"type": "screen", "userId": "seg-u1"},
        {"type": "identify", "userId": "seg-u2", "traits": {"company": {"id": "seg-globex"}}},
        {"type": "alias", "userId": "seg-u1", "previousId": "anon-7"},
        {"type": "nonsense"},
        {"type": "track", "userId": "seg-nobody", "event": "Clicked"},
        {"type": "track", "userId": "seg-u1", "event": "Exported", "properties": {"count": 4}},
        {"type": "track", "userId": "seg-u1", "event": "Session Start"},
        {"type": "track", "userId": "seg-u1", "event": "Bad", "timestamp": "not a time"},
    ]
    r = await post(client, "/v1/batch", {"batch": batch, "sentAt": now.isoformat()})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "success": True,
        "rejected": [
            {
                "index": 8,
                "reason": "type: type must be one of: alias, group, identify, page, screen, track",
            },
            {
                "index": 9,
                "reason": "account_id: cannot resolve the account: send context.groupId, "
                "properties.account_id or traits.account_id, or a group call for this user first",
            },
            {
                "index": 12,
                "reason": "timestamp: Input should be a valid datetime or date, "
                "invalid character in year",
            },
        ],
    }
    got = await events_of(settings, "seg-", at_least=8)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for m in got:
        by_type.setdefault(m["type"], []).append(m)
    (account,) = by_type["account_updated"]
    assert account["account_id"] == "seg-acme" and account["id"] == "seg-m0"
    assert (account["name"], account["seats_purchased"], account["plan"]) == ("Acme", 50, "pro")
    assert account["_key"] == "seg-acme"
    features = sorted(
        (m["feature"], m.get("count", 1), m["account_id"]) for m in by_type["feature_used"]
    )
    assert features == [("Exported", 4, "seg-acme"), ("Report Exported", 1, "seg-acme")]
    assert [m["id"] for m in by_type["feature_used"] if m["feature"] == "Report Exported"] == [
        "seg-m1"
    ]
    (session,) = by_type["session"]
    assert session["duration_seconds"] == 300 and session["account_id"] == "seg-acme"
    logins = sorted((m["user_id"], m["account_id"]) for m in by_type["login"])
    assert logins == [
        ("anon-7", "seg-acme"),  # page
        ("seg-u1", "seg-acme"),  # screen, via the link
        ("seg-u1", "seg-acme"),  # "Session Start" is a login by configuration
        ("seg-u9", "seg-x"),  # "Logged In", account from context.groupId
    ]
    # the group's timestamp was kept (sentAt ≈ receipt, so the skew is ~0)
    assert abs(
        datetime.fromisoformat(account["timestamp"]) - datetime.fromisoformat(ts)
    ) < timedelta(seconds=5)
    conn = await asyncpg.connect(database_url)
    try:
        links = dict(await conn.fetch("SELECT user_id, account_id FROM ingest_user_accounts"))
    finally:
        await conn.close()
    assert links["seg-u1"] == "seg-acme" and links["seg-u2"] == "seg-globex"


async def test_links_from_earlier_requests_resolve_later_calls(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    r = await post(
        client, "/v1/identify", {"userId": "lnk-u", "traits": {"account_id": "lnk-acct"}}
    )
    assert r.json() == {"success": True, "rejected": []}
    r = await post(client, "/v1/track", {"userId": "lnk-u", "event": "Dashboard Viewed"})
    assert r.status_code == 200 and r.json() == {"success": True, "rejected": []}
    (event,) = await events_of(settings, "lnk-", at_least=1)
    assert (event["type"], event["feature"], event["user_id"]) == (
        "feature_used",
        "Dashboard Viewed",
        "lnk-u",
    )


async def test_batch_context_is_merged_and_sent_at_corrects_skew(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    client_clock = datetime.now(UTC) - timedelta(hours=2)  # two hours slow
    happened = client_clock - timedelta(minutes=1)
    body = {
        "batch": [
            {"type": "page", "userId": "ctx-u", "timestamp": happened.isoformat()},
            {"type": "page", "userId": "ctx-u", "context": {"groupId": "ctx-own"}},
        ],
        "context": {"groupId": "ctx-batch", "library": {"name": "test"}},
        "sentAt": client_clock.isoformat(),
    }
    before = datetime.now(UTC)
    r = await post(client, "/v1/batch", body)
    assert r.json() == {"success": True, "rejected": []}
    got = await events_of(settings, "ctx-", at_least=2)
    accounts = sorted(m["account_id"] for m in got)
    assert accounts == ["ctx-batch", "ctx-own"]  # the item's own context wins
    skewed = next(m for m in got if m["account_id"] == "ctx-batch")
    corrected = datetime.fromisoformat(skewed["timestamp"])
    assert before - timedelta(minutes=1, seconds=5) <= corrected <= before


async def test_write_key_in_body_and_gzip(client: httpx.AsyncClient) -> None:
    body = {
        "batch": [{"type": "page", "userId": "wk-u", "context": {"groupId": "wk-a"}}],
        "writeKey": BOOTSTRAP_KEY,
    }
    r = await client.post(
        "/v1/batch",
        content=gzip.compress(orjson.dumps(body)),
        headers={**JSON, "Content-Encoding": "gzip"},
    )
    assert r.status_code == 200 and r.json() == {"success": True, "rejected": []}
    body["writeKey"] = "hs_wrong"
    r = await client.post("/v1/batch", content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 401
    assert r.json() == {"detail": "unknown or revoked API key"}
    del body["writeKey"]
    r = await client.post("/v1/batch", content=orjson.dumps(body), headers=JSON)
    assert r.status_code == 401
    assert r.json() == {
        "detail": "missing API key: send it as the Basic-auth user name, "
        "Authorization: Bearer <key>, or writeKey in the body"
    }


async def test_strict_mode_rejects_the_whole_batch(
    client: httpx.AsyncClient, settings: IngestSettings
) -> None:
    body = {
        "batch": [
            {"type": "page", "userId": "strict-u", "context": {"groupId": "strict-a"}},
            {"type": "track", "userId": "strict-u", "context": {"groupId": "strict-a"}},
            {"type": "group", "userId": "strict-u"},
        ]
    }
    r = await post(client, "/v1/batch", body, headers={"X-Strict-Mode": "1"})
    assert r.status_code == 400
    assert r.json() == {
        "errors": [
            {"index": 1, "field": "event", "message": "a track call needs an event name"},
            {"index": 2, "field": "groupId", "message": "a group call needs a groupId"},
        ]
    }
    assert await events_of(settings, "strict-", at_least=0) == []
    r = await post(client, "/v1/batch", body)  # not strict: the good item goes through
    assert r.status_code == 200 and [x["index"] for x in r.json()["rejected"]] == [1, 2]
    assert len(await events_of(settings, "strict-", at_least=1)) == 1


NUL = "must not contain a NUL character (U+0000)"


async def test_a_nul_in_any_text_rejects_the_item_and_the_rest_goes_through(
    client: httpx.AsyncClient, settings: IngestSettings, database_url: str
) -> None:
    """PostgreSQL text cannot hold U+0000: such an item would be dead-lettered by
    scoring (or fail storing its link), so it is listed in ``rejected`` by the field
    the client sent, and the good items of the batch are still published."""
    batch = [
        {"type": "track", "userId": "nul-u", "event": "E\u0000", "context": {"groupId": "nul-a"}},
        {"type": "track", "userId": "nul-\u0000", "event": "E", "context": {"groupId": "nul-a"}},
        {"type": "identify", "userId": "nul-v", "traits": {"account_id": "nul-\u0000"}},
        {"type": "group", "userId": "nul-w", "groupId": "nul-\u0000"},  # a bare link
        {"type": "group", "userId": "nul-x", "groupId": "nul-a", "traits": {"name": "A\u0000"}},
        {"type": "page", "userId": "nul-u", "messageId": "\u0000", "context": {"groupId": "nul-a"}},
        # a NUL where the mapping takes nothing from is not stored, so not refused
        {
            "type": "page",
            "userId": "nul-u",
            "properties": {"title": "\u0000"},
            "context": {"groupId": "nul-a"},
        },
    ]
    r = await post(client, "/v1/batch", {"batch": batch})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "success": True,
        "rejected": [
            {"index": 0, "reason": f"event: {NUL}"},
            {"index": 1, "reason": f"userId: {NUL}"},
            {"index": 2, "reason": f"traits.account_id: {NUL}"},
            {"index": 3, "reason": f"groupId: {NUL}"},
            {"index": 4, "reason": f"name: {NUL}"},
            {"index": 5, "reason": f"id: {NUL}"},
        ],
    }
    published = await events_of(settings, "nul-", at_least=1)
    assert [(m["type"], m["user_id"], m["account_id"]) for m in published] == [
        ("login", "nul-u", "nul-a")
    ]
    conn = await asyncpg.connect(database_url)
    try:
        linked = await conn.fetch(
            "SELECT user_id FROM ingest_user_accounts WHERE user_id LIKE 'nul-%'"
        )
    finally:
        await conn.close()
    assert linked == []  # none of the refused links was stored

    # the audit's case on a single-call endpoint, and strict mode: all or nothing
    r = await post(client, "/v1/track", {"userId": "nul-u", "event": "E\u0000"})
    assert r.status_code == 200
    assert r.json() == {"success": True, "rejected": [{"index": 0, "reason": f"event: {NUL}"}]}
    r = await post(client, "/v1/batch", {"batch": batch[5:]}, headers={"X-Strict-Mode": "1"})
    assert r.status_code == 400
    assert r.json() == {"errors": [{"index": 0, "field": "id", "message": NUL}]}
    assert len(await events_of(settings, "nul-", at_least=1)) == 1  # still only the first


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "answer"),
    [
        pytest.param("/v1/batch", b"{nope", JSON, 400, None, id="malformed"),
        pytest.param(
            "/v1/batch",
            b"[]",
            JSON,
            400,
            {"detail": "the body must be a JSON object"},
            id="array",
        ),
        pytest.param(
            "/v1/batch",
            b'{"batch": 5}',
            JSON,
            400,
            {"detail": 'the body must be {"batch": [...]}'},
            id="batch-not-list",
        ),
        pytest.param(
            "/v1/track",
            b"{}",
            {"Content-Type": "text/csv"},
            415,
            {"detail": "Content-Type must be application/json (got text/csv)"},
            id="csv",
        ),
        pytest.param(
            "/v1/batch",
            orjson.dumps({"batch": [{"type": "alias"}] * 2501}),
            JSON,
            413,
            {"detail": "2501 events in one request; the limit is 2500"},
            id="too-many",
        ),
    ],
)
async def test_segment_request_errors(
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    answer: dict[str, Any] | None,
) -> None:
    r = await client.post(path, content=body, headers={**BASIC, **headers})
    assert r.status_code == status, r.text
    if answer is not None:
        assert r.json() == answer
    else:
        assert r.json()["detail"].startswith("the body is not valid JSON")


async def test_text_plain_is_accepted_for_segment(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/page",
        content=orjson.dumps({"userId": "tp-u", "context": {"groupId": "tp-a"}}),
        headers={**BASIC, "Content-Type": "text/plain"},
    )
    assert r.status_code == 200 and r.json() == {"success": True, "rejected": []}


@pytest.mark.parametrize("kind", ["track", "identify", "group", "page", "screen", "alias"])
async def test_single_call_endpoints(client: httpx.AsyncClient, kind: str) -> None:
    body = {
        "userId": f"single-{kind}",
        "event": "Thing Done",
        "groupId": "single-acct",
        "traits": {"plan": "pro"},
        "context": {"groupId": "single-acct"},
    }
    r = await post(client, f"/v1/{kind}", body)
    assert r.status_code == 200 and r.json() == {"success": True, "rejected": []}


def _metric(text: str, type_: str, outcome: str) -> float:
    needle = f'healthscore_ingest_events_total{{outcome="{outcome}",type="{type_}"}} '
    for line in text.splitlines():
        if line.startswith(needle):
            return float(line[len(needle) :])
    return 0.0


async def test_segment_items_are_counted_accepted_and_rejected(client: httpx.AsyncClient) -> None:
    before = (await client.get("/metrics")).text
    body = {
        "batch": [
            {"type": "page", "userId": "met-u", "context": {"groupId": "met-a"}},
            {"type": "track", "userId": "met-nobody", "event": "Clicked"},  # no account
            {"type": "bogus"},
        ]
    }
    r = await post(client, "/v1/batch", body)
    assert [x["index"] for x in r.json()["rejected"]] == [1, 2]
    after = (await client.get("/metrics")).text
    assert _metric(after, "login", "accepted") - _metric(before, "login", "accepted") == 1
    delta_feature = _metric(after, "feature_used", "rejected") - _metric(
        before, "feature_used", "rejected"
    )
    assert delta_feature == 1
    assert _metric(after, "unknown", "rejected") - _metric(before, "unknown", "rejected") == 1
