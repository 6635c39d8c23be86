"""The Segment → Healthscore mapping of SPEC §3.2 (pure: dicts in, plans out).

A Segment message (``track``, ``identify``, ``group``, ``page``, ``screen``,
``alias``) becomes at most one catalogue event plus, perhaps, a user → account
link. Resolving an account may need the links stored earlier (Postgres): the
adapter asks :func:`users_to_look_up` which users to fetch, then :func:`resolve`
applies links in batch order (a ``group`` call earlier in a batch already counts
for later items of the same batch).

Mapping:
- ``track`` named as a login (configurable) → ``login``; a ``track`` carrying
  ``properties.duration_seconds`` → ``session``; any other ``track`` →
  ``feature_used`` (``feature`` = the event name, ``count`` from
  ``properties.count`` when given);
- ``page``, ``screen`` → ``login`` (the user was active that day);
- ``group`` → ``account_updated`` from its traits (when it carries any) and a link
  user → ``groupId``;
- ``identify`` → a link when its traits name an account; no event;
- ``alias`` → accepted, no effect.
- ``messageId`` → ``id``; ``timestamp`` (or ``originalTimestamp``); ``sentAt`` of
  the item or of the batch → ``sent_at`` (clock-skew correction).

The NUL rule of :mod:`shared.events` covers the mapped event (its model refuses
it); the ids an item contributes besides (the user and the account of a link,
stored in Postgres) and a ``track``'s event name are held to it here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.events import NUL_MESSAGE, contains_nul

DEFAULT_LOGIN_EVENTS: tuple[str, ...] = ("Logged In", "Signed In", "login")
MESSAGE_TYPES = frozenset({"track", "identify", "group", "page", "screen", "alias"})

# group traits → account_updated fields
_ACCOUNT_TRAITS: dict[str, str] = {
    "name": "name",
    "seats": "seats_purchased",
    "seats_purchased": "seats_purchased",
    "plan": "plan",
    "lifecycle_stage": "lifecycle_stage",
    "arr": "arr",
    "renewal_date": "renewal_date",
    "csm": "csm",
    "onboarding_completed_at": "onboarding_completed_at",
}


@dataclass(frozen=True, slots=True)
class Rejection:
    """An item that is not published: its index, the field at fault, why."""

    index: int
    field: str | None
    reason: str


@dataclass(slots=True)
class Plan:
    """What one valid Segment item turns into, before account resolution.

    ``event`` is a catalogue event as a JSON object without ``account_id`` yet
    (None: no event, e.g. ``identify``); ``account_id`` is set when the item names
    its account; otherwise ``user_id`` is looked up in the links. ``link`` is a
    user → account link to remember.
    """

    index: int
    event: dict[str, Any] | None
    account_id: str | None = None
    user_id: str | None = None
    link: tuple[str, str] | None = None
    kind: str = field(default="")


def _str_id(value: object) -> str | None:
    """Segment ids may arrive as numbers; anything else counts as absent."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def merge_context(item: dict[str, Any], batch_context: object) -> dict[str, Any]:
    """The item with the batch's ``context`` merged in (the item's own keys win)."""
    if not isinstance(batch_context, dict) or not batch_context:
        return item
    merged = dict(batch_context)
    merged.update(_obj(item.get("context")))
    return {**item, "context": merged}


def account_named_by(item: Mapping[str, Any]) -> tuple[str, str] | None:
    """The account an item names itself, with the field it came from:
    ``context.groupId``, then ``properties.account_id``, ``traits.account_id``
    (the item's or its context's), then ``traits.company.id``."""
    context = _obj(item.get("context"))
    found = _str_id(context.get("groupId"))
    if found:
        return "context.groupId", found
    found = _str_id(_obj(item.get("properties")).get("account_id"))
    if found:
        return "properties.account_id", found
    for prefix, traits in (
        ("traits", _obj(item.get("traits"))),
        ("context.traits", _obj(context.get("traits"))),
    ):
        found = _str_id(traits.get("account_id"))
        if found:
            return f"{prefix}.account_id", found
        found = _str_id(_obj(traits.get("company")).get("id"))
        if found:
            return f"{prefix}.company.id", found
    return None


def plan_item(
    index: int,
    item: object,
    *,
    login_events: frozenset[str],
    batch_sent_at: object = None,
) -> Plan | Rejection:
    """Map one Segment message (context already merged)."""
    if not isinstance(item, dict):
        return Rejection(index, None, "item must be a JSON object")
    kind = item.get("type")
    if kind not in MESSAGE_TYPES:
        return Rejection(index, "type", "type must be one of: " + ", ".join(sorted(MESSAGE_TYPES)))
    user_field = "userId" if _str_id(item.get("userId")) else "anonymousId"
    user_id = _str_id(item.get(user_field))
    if user_id is not None and contains_nul(user_id):
        return Rejection(index, user_field, NUL_MESSAGE)
    base: dict[str, Any] = {}
    message_id = item.get("messageId")
    if message_id is not None:
        base["id"] = message_id
    timestamp = item.get("timestamp") or item.get("originalTimestamp")
    if timestamp is not None:
        base["timestamp"] = timestamp
    sent_at = item.get("sentAt") or batch_sent_at
    if sent_at is not None and timestamp is not None:
        base["sent_at"] = sent_at

    if kind == "alias":
        return Plan(index, None, kind=kind)
    if kind == "group":
        group_id = _str_id(item.get("groupId"))
        if group_id is None:
            return Rejection(index, "groupId", "a group call needs a groupId")
        if contains_nul(group_id):
            return Rejection(index, "groupId", NUL_MESSAGE)
        traits = _obj(item.get("traits"))
        attributes = {
            target: traits[source] for source, target in _ACCOUNT_TRAITS.items() if source in traits
        }
        event = {**base, "type": "account_updated", **attributes} if attributes else None
        link = (user_id, group_id) if user_id else None
        return Plan(index, event, account_id=group_id, link=link, kind=kind)

    named = account_named_by(item)
    if named is not None and contains_nul(named[1]):
        return Rejection(index, named[0], NUL_MESSAGE)
    account = None if named is None else named[1]
    if kind == "identify":
        link = (user_id, account) if user_id and account else None
        return Plan(index, None, link=link, kind=kind)
    if user_id is None:
        return Rejection(index, "userId", f"a {kind} call needs a userId or anonymousId")
    event = {**base, "user_id": user_id}
    properties = _obj(item.get("properties"))
    if kind in ("page", "screen"):
        event["type"] = "login"
    else:  # track
        name = item.get("event")
        if not isinstance(name, str) or not name:
            return Rejection(index, "event", "a track call needs an event name")
        if contains_nul(name):
            return Rejection(index, "event", NUL_MESSAGE)
        if name in login_events:
            event["type"] = "login"
        elif "duration_seconds" in properties:
            event["type"] = "session"
            event["duration_seconds"] = properties["duration_seconds"]
        else:
            event["type"] = "feature_used"
            event["feature"] = name
            if "count" in properties:
                event["count"] = properties["count"]
    return Plan(index, event, account_id=account, user_id=user_id, kind=kind)


def users_to_look_up(plans: Iterable[Plan | Rejection]) -> set[str]:
    """Users whose stored account link is needed: items with an event but no
    account of their own."""
    return {
        p.user_id
        for p in plans
        if isinstance(p, Plan) and p.event is not None and p.account_id is None and p.user_id
    }


def resolve(
    plans: Iterable[Plan | Rejection], stored_links: Mapping[str, str]
) -> list[Plan | Rejection]:
    """Give every planned event its account, in batch order; an event whose
    account cannot be found becomes a :class:`Rejection`."""
    links = dict(stored_links)
    out: list[Plan | Rejection] = []
    for p in plans:
        if isinstance(p, Rejection):
            out.append(p)
            continue
        if p.event is not None and p.account_id is None:
            account = links.get(p.user_id) if p.user_id else None
            if account is None:
                out.append(
                    Rejection(
                        p.index,
                        "account_id",
                        "cannot resolve the account: send context.groupId, "
                        "properties.account_id or traits.account_id, or a group call "
                        "for this user first",
                    )
                )
                continue
            p.account_id = account
        if p.event is not None:
            p.event["account_id"] = p.account_id
        if p.link is not None:
            links[p.link[0]] = p.link[1]
        out.append(p)
    return out


def links_to_store(plans: Iterable[Plan]) -> dict[str, str]:
    """User → account links of the accepted plans (the last one per user wins)."""
    return {p.link[0]: p.link[1] for p in plans if p.link is not None}
