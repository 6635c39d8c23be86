"""The per (account, rule) alert state machine (SPEC §7). Pure: the caller loads the
state, calls :func:`evaluate`, and stores what it returns in one transaction.

- A rule's condition counts once per evaluation (health snapshot). After
  ``for_evaluations`` consecutive evaluations where it held, the alert **fires** —
  unless it is already open, or it resolved less than ``cooldown`` ago.
- An open alert **resolves** when the value crosses back past
  ``resolve_threshold`` (hysteresis: between the two thresholds it stays open).
- A null value (or one that cannot be compared) neither fires, resolves nor
  counts; nor does a snapshot the rule does not apply to (grace period,
  lifecycle stage): the state is left exactly as it was.
- The band changing from one snapshot to the next is its own event,
  ``score.band_changed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from services.alerts.rules import Rule, Value, is_breached, is_recovered, kpi_value
from shared.health import HealthSnapshot

Transition = Literal["fired", "resolved"]


@dataclass(frozen=True)
class RuleState:
    """What is remembered per (account, rule) between evaluations."""

    consecutive: int = 0
    open_alert_id: str | None = None
    fired_at: datetime | None = None
    resolved_at: datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.open_alert_id is not None


@dataclass(frozen=True)
class AlertTransition:
    """An alert that fired or resolved on this evaluation."""

    transition: Transition
    rule: Rule
    alert_id: str
    value: Value
    at: datetime
    fired_at: datetime


@dataclass(frozen=True)
class BandChange:
    account_id: str
    previous_band: str
    band: str
    at: datetime


def evaluate(
    rule: Rule,
    state: RuleState,
    snapshot: HealthSnapshot,
    new_alert_id: str,
) -> tuple[RuleState, AlertTransition | None]:
    """Apply one snapshot to one rule's state. ``new_alert_id`` is used when it fires.

    Time is the snapshot's ``evaluated_at`` (cooldowns follow the data, so a replay
    decides the same way)."""
    if not rule.applies_to(snapshot):
        return state, None
    value = kpi_value(snapshot, rule.kpi)
    now = snapshot.evaluated_at
    if state.is_open:
        recovered = is_recovered(rule, value)
        if recovered is None:
            return state, None
        if recovered:
            assert state.open_alert_id is not None and state.fired_at is not None
            event = AlertTransition(
                "resolved", rule, state.open_alert_id, value, now, state.fired_at
            )
            return RuleState(0, None, None, now), event
        breached = is_breached(rule, value)
        return replace(state, consecutive=state.consecutive + 1 if breached else 0), None
    breached = is_breached(rule, value)
    if breached is None:
        return state, None
    if not breached:
        return replace(state, consecutive=0), None
    consecutive = state.consecutive + 1
    cooling = state.resolved_at is not None and now < state.resolved_at + timedelta(
        seconds=rule.cooldown
    )
    if consecutive >= rule.for_evaluations and not cooling:
        event = AlertTransition("fired", rule, new_alert_id, value, now, now)
        return RuleState(consecutive, new_alert_id, now, state.resolved_at), event
    return replace(state, consecutive=consecutive), None


def band_change(snapshot: HealthSnapshot, last_band: str | None) -> BandChange | None:
    """A band change relative to the band this service last saw for the account
    (or, for an account it has not seen, the snapshot's own ``previous_band``)."""
    previous = last_band if last_band is not None else snapshot.previous_band
    if snapshot.band is None or previous is None or previous == snapshot.band:
        return None
    return BandChange(snapshot.account_id, previous, snapshot.band, snapshot.evaluated_at)
