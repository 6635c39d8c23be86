"""The Segment → catalogue mapping (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from services.ingest.segment import (
    DEFAULT_LOGIN_EVENTS,
    Plan,
    Rejection,
    links_to_store,
    merge_context,
    plan_item,
    resolve,
    users_to_look_up,
)

LOGINS = frozenset(DEFAULT_LOGIN_EVENTS)


def plan(item: Any, **kw: Any) -> Plan | Rejection:
    return plan_item(0, item, login_events=LOGINS, **kw)


@pytest.mark.parametrize(
    ("item", "event", "account"),
    [
        pytest.param(
            {"type": "track", "userId": "u", "event": "Signed In"},
            {"type": "login", "user_id": "u"},
            None,
            id="track-login",
        ),
        pytest.param(
            {
                "type": "track",
                "userId": "u",
                "event": "Call",
                "properties": {"duration_seconds": 9},
            },
            {"type": "session", "user_id": "u", "duration_seconds": 9},
            None,
            id="track-session",
        ),
        pytest.param(
            {
                "type": "track",
                "anonymousId": "x",
                "event": "Export",
                "properties": {"account_id": "a"},
            },
            {"type": "feature_used", "user_id": "x", "feature": "Export"},
            "a",
            id="track-feature",
        ),
        pytest.param(
            {"type": "page", "userId": 42, "context": {"groupId": "g"}},
            {"type": "login", "user_id": "42"},
            "g",
            id="page-numeric-user",
        ),
        pytest.param(
            {"type": "screen", "userId": "u", "traits": {"company": {"id": "c"}}},
            {"type": "login", "user_id": "u"},
            "c",
            id="screen-company",
        ),
        pytest.param(
            {"type": "group", "groupId": "g", "traits": {"seats": 5, "lifecycle_stage": "trial"}},
            {"type": "account_updated", "seats_purchased": 5, "lifecycle_stage": "trial"},
            "g",
            id="group",
        ),
        pytest.param(
            {"type": "group", "groupId": "g", "traits": {"industry": "x"}},
            None,
            "g",
            id="group-no-attrs",
        ),
        pytest.param({"type": "identify", "userId": "u"}, None, None, id="identify"),
        pytest.param({"type": "alias", "userId": "u"}, None, None, id="alias"),
    ],
)
def test_mapping(item: dict[str, Any], event: dict[str, Any] | None, account: str | None) -> None:
    p = plan(item)
    assert isinstance(p, Plan)
    assert p.event == event
    assert p.account_id == account


def test_message_id_timestamp_and_sent_at_are_carried() -> None:
    item = {
        "type": "page",
        "userId": "u",
        "messageId": "m",
        "timestamp": "2026-01-01T00:00:00Z",
    }
    p = plan(item, batch_sent_at="2026-01-01T00:00:05Z")
    assert isinstance(p, Plan) and p.event is not None
    assert (p.event["id"], p.event["timestamp"], p.event["sent_at"]) == (
        "m",
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:05Z",
    )


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param("x", None, id="not-object"),
        pytest.param({"type": "flush"}, "type", id="type"),
        pytest.param({"type": "track", "event": "E"}, "userId", id="no-user"),
        pytest.param({"type": "track", "userId": "u"}, "event", id="no-event-name"),
        pytest.param({"type": "group", "userId": "u"}, "groupId", id="no-group-id"),
    ],
)
def test_rejections(item: Any, field: str | None) -> None:
    r = plan(item)
    assert isinstance(r, Rejection) and r.field == field


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param({"type": "track", "userId": "u\x00", "event": "E"}, "userId", id="userId"),
        pytest.param(
            {"type": "page", "anonymousId": "\x00", "context": {"groupId": "g"}},
            "anonymousId",
            id="anonymousId",
        ),
        pytest.param(
            {"type": "alias", "userId": "u\x00", "previousId": "p"}, "userId", id="alias-user"
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E\x00", "context": {"groupId": "g"}},
            "event",
            id="event-name",
        ),
        pytest.param(
            {
                "type": "track",
                "userId": "u",
                "event": "E",
                "properties": {"duration_seconds": 1, "note": "x\x00"},
                "context": {"groupId": "g", "page": {"title": "\x00"}},
            },
            None,
            id="unused-fields-are-not-looked-at",
        ),
        pytest.param({"type": "group", "userId": "u", "groupId": "g\x00"}, "groupId", id="group"),
        pytest.param(
            {"type": "identify", "userId": "u", "traits": {"account_id": "a\x00"}},
            "traits.account_id",
            id="identify-traits",
        ),
        pytest.param(
            {"type": "identify", "userId": "u", "context": {"traits": {"company": {"id": "\x00"}}}},
            "context.traits.company.id",
            id="identify-context-company",
        ),
        pytest.param(
            {"type": "screen", "userId": "u", "context": {"groupId": "g\x00"}},
            "context.groupId",
            id="screen-group",
        ),
        pytest.param(
            {"type": "track", "userId": "u", "event": "E", "properties": {"account_id": "\x00"}},
            "properties.account_id",
            id="track-properties",
        ),
    ],
)
def test_a_nul_in_an_id_or_event_name_is_rejected_where_it_was_sent(
    item: dict[str, Any], field: str | None
) -> None:
    """Ids end up in Postgres (the user → account links) or in the event; the NUL
    rule of shared.events names the Segment field the client sent. Fields the mapping
    does not use are not looked at."""
    r = plan(item)
    if field is None:
        assert isinstance(r, Plan)
        return
    assert isinstance(r, Rejection)
    assert (r.field, r.reason) == (field, "must not contain a NUL character (U+0000)")


def test_context_merge_item_wins() -> None:
    merged = merge_context({"context": {"a": 1}}, {"a": 2, "b": 3})
    assert merged["context"] == {"a": 1, "b": 3}
    assert merge_context({"x": 1}, None) == {"x": 1}


def test_resolution_uses_links_in_batch_order() -> None:
    plans = [
        plan_item(0, {"type": "track", "userId": "u", "event": "A"}, login_events=LOGINS),
        plan_item(1, {"type": "group", "userId": "u", "groupId": "g2"}, login_events=LOGINS),
        plan_item(2, {"type": "track", "userId": "u", "event": "B"}, login_events=LOGINS),
        plan_item(3, {"type": "track", "userId": "v", "event": "C"}, login_events=LOGINS),
    ]
    assert users_to_look_up(plans) == {"u", "v"}
    out = resolve(plans, {"u": "g1"})
    assert [p.account_id if isinstance(p, Plan) else "rejected" for p in out] == [
        "g1",  # the stored link
        "g2",
        "g2",  # the group call earlier in this batch
        "rejected",  # v has no account
    ]
    assert links_to_store([p for p in out if isinstance(p, Plan)]) == {"u": "g2"}
