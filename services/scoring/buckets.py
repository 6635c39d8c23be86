"""Fold a batch of events into per-bucket deltas (pure), so the adapter writes each
bucket once per batch with one multi-row upsert per table.

The fold is where each event type's meaning for the windows lives:
- ``login``/``feature_used``/``session`` from a user → that user active that day,
  ``product_events`` of the day +1; sessions add seconds; features mark the
  (feature, day) used;
- ``communication`` → touchpoints +1, inbound/outbound touch of the contact that
  day, support tickets (inbound ``support_ticket``), escalations, sentiment of
  inbound messages;
- ``survey_response`` with ``survey: nps`` → promoters (9–10) / detractors (0–6);
- ``account_updated``/``contact_updated`` → per attribute, the value of the latest
  event by timestamp (ties: later in the batch wins; the upsert applies the same
  rule against what is stored).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from shared.events import (
    ACCOUNT_ATTRIBUTE_NAMES,
    ACCOUNT_ATTRIBUTES,
    CONTACT_ATTRIBUTE_NAMES,
    AccountUpdated,
    Communication,
    ContactUpdated,
    Event,
    FeatureUsed,
    Login,
    Session,
    SurveyResponse,
    event_day,
)

DAY_COUNTERS: tuple[str, ...] = (
    "product_events",
    "session_seconds",
    "touchpoints",
    "inbound",
    "support_tickets",
    "escalations",
    "sentiment_sum",
    "sentiment_count",
    "nps_promoters",
    "nps_detractors",
    "nps_responses",
)
DAY_FLOATS = frozenset({"session_seconds", "sentiment_sum"})  # the others count
DAY_INDEX = {name: i for i, name in enumerate(DAY_COUNTERS)}
(
    PRODUCT_EVENTS,
    SESSION_SECONDS,
    TOUCHPOINTS,
    INBOUND,
    SUPPORT_TICKETS,
    ESCALATIONS,
    SENTIMENT_SUM,
    SENTIMENT_COUNT,
    NPS_PROMOTERS,
    NPS_DETRACTORS,
    NPS_RESPONSES,
) = range(len(DAY_COUNTERS))
# a day's counters, in DAY_COUNTERS order (rows are built as the upsert's columns)
EMPTY_DAY: tuple[float, ...] = tuple(0.0 if c in DAY_FLOATS else 0 for c in DAY_COUNTERS)
ACCOUNT_ATTRS = ACCOUNT_ATTRIBUTE_NAMES  # storage column order
CONTACT_ATTRS = CONTACT_ATTRIBUTE_NAMES


@dataclass
class AttrUpdate:
    """Latest value per attribute within the batch: attr → (as_of, value)."""

    values: dict[str, tuple[datetime, Any]] = field(default_factory=dict)
    was_champion: bool = False
    # The role offers that won, in the order processed (their timestamps never
    # decrease), as the store needs them to apply the batch as if event by event
    # (``store.window_statements``): the last one that was not ``champion``, and
    # those since then, which are all ``champion`` (the run the role is in).
    role_break: datetime | None = None
    champion_run: list[datetime] = field(default_factory=list)

    def offer(self, attr: str, as_of: datetime, value: Any) -> bool:
        held = self.values.get(attr)
        if held is None or as_of >= held[0]:
            self.values[attr] = (as_of, value)
            return True
        return False


@dataclass
class BatchDeltas:
    first_event_day: dict[str, date] = field(default_factory=dict)
    last_event_day: dict[str, date] = field(default_factory=dict)
    # (account, day) → counters in DAY_COUNTERS order (see DAY_INDEX)
    days: dict[tuple[str, date], list[float]] = field(default_factory=dict)
    user_days: set[tuple[str, date, str]] = field(default_factory=set)
    feature_days: dict[tuple[str, date, str], int] = field(default_factory=dict)
    contact_days: dict[tuple[str, date, str], list[int]] = field(default_factory=dict)
    contacts_seen: set[tuple[str, str]] = field(default_factory=set)
    accounts: dict[str, AttrUpdate] = field(default_factory=dict)
    contacts: dict[tuple[str, str], AttrUpdate] = field(default_factory=dict)

    def _day(self, account: str, day: date) -> list[float]:
        row = self.days.get((account, day))
        if row is None:
            row = self.days[(account, day)] = list(EMPTY_DAY)
        return row


def fold(events: Iterable[Event], into: BatchDeltas | None = None) -> BatchDeltas:
    """Aggregate (already deduplicated) events, in processing order; ``into``: add
    them to these deltas (a batch folded in parts is the same as folded at once)."""
    out = BatchDeltas() if into is None else into
    for ev in events:
        acc = ev.account_id
        day = event_day(ev)
        prev = out.last_event_day.get(acc)
        if prev is None or day > prev:
            out.last_event_day[acc] = day
        first = out.first_event_day.get(acc)
        if first is None or day < first:
            out.first_event_day[acc] = day
        ts = ev.timestamp
        assert ts is not None
        if isinstance(ev, Login | FeatureUsed | Session):
            row = out._day(acc, day)
            row[PRODUCT_EVENTS] += 1
            out.user_days.add((acc, day, ev.user_id))
            if isinstance(ev, Session):
                row[SESSION_SECONDS] += ev.duration_seconds
            elif isinstance(ev, FeatureUsed):
                key = (acc, day, ev.feature)
                out.feature_days[key] = out.feature_days.get(key, 0) + ev.count
        elif isinstance(ev, Communication):
            row = out._day(acc, day)
            row[TOUCHPOINTS] += 1
            inbound = ev.direction == "inbound"
            touch = out.contact_days.setdefault((acc, day, ev.contact_id), [0, 0])
            touch[0 if inbound else 1] += 1
            out.contacts_seen.add((acc, ev.contact_id))
            if inbound:
                row[INBOUND] += 1
                if ev.channel == "support_ticket":
                    row[SUPPORT_TICKETS] += 1
                if ev.sentiment is not None:
                    row[SENTIMENT_SUM] += ev.sentiment
                    row[SENTIMENT_COUNT] += 1
            if ev.escalation:
                row[ESCALATIONS] += 1
        elif isinstance(ev, SurveyResponse):
            row = out._day(acc, day)  # the account has a bucket that day either way
            if ev.survey == "nps":
                row[NPS_RESPONSES] += 1
                if ev.score >= 9:
                    row[NPS_PROMOTERS] += 1
                elif ev.score <= 6:
                    row[NPS_DETRACTORS] += 1
        elif isinstance(ev, AccountUpdated):
            upd = out.accounts.setdefault(acc, AttrUpdate())
            for attr in ev.model_fields_set & ACCOUNT_ATTRIBUTES:
                upd.offer(attr, ts, getattr(ev, attr))
        elif isinstance(ev, ContactUpdated):
            contact = (acc, ev.contact_id)
            out.contacts_seen.add(contact)
            upd = out.contacts.setdefault(contact, AttrUpdate())
            for attr in ev.model_fields_set & set(CONTACT_ATTRS):
                value = getattr(ev, attr)
                if attr == "left_company" and value is None:
                    value = False
                won = upd.offer(attr, ts, value)
                if attr == "role" and value == "champion":
                    upd.was_champion = True
                if attr == "role" and won:
                    if value == "champion":
                        upd.champion_run.append(ts)
                    else:
                        upd.role_break, upd.champion_run = ts, []
    return out
