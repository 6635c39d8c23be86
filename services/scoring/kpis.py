"""Every KPI of SPEC §4, from window aggregates: pure functions.

The SQL adapter (``store.py``) reduces the stored per-day buckets of an account
to one :class:`WindowAggregates` per evaluation day; :func:`compute_kpis` turns
that into the KPI values exactly as SPEC §4 defines them. A KPI whose inputs do
not exist is ``None`` — never imputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from services.scoring.windows import days_since

KpiValue = float | int | bool | None


@dataclass(slots=True)
class WindowAggregates:
    """What the windows hold for one account as of one UTC day (a plain slots
    class, not frozen: one is built per account per evaluation, and frozen
    dataclasses pay a ``object.__setattr__`` call per field).

    Day ranges (inclusive): 7-day = D−6…D, 30-day = D−29…D, 90-day = D−89…D,
    the comparison week of ``usage_trend`` = D−34…D−28.
    """

    as_of: date
    dau: int = 0  # distinct active users on D
    wau: int = 0  # distinct active users in 7 days
    mau: int = 0  # distinct active users in 30 days
    user_days_30d: int = 0  # Σ over the 30 days of that day's distinct active users
    users_d34_d28: int = 0  # distinct active users in D−34…D−28
    seats_purchased: int | None = None
    key_features_configured: int = 0
    key_features_used_30d: int = 0
    features_used_30d: int = 0
    session_seconds_30d: float = 0.0
    last_activity_day: date | None = None  # latest day ≤ D with a product event
    inbound_contacts_30d: int = 0  # distinct contacts, inbound, 30 d, not left_company
    touchpoints_30d: int = 0
    last_inbound_day: date | None = None  # latest day ≤ D with an inbound communication
    # one reference day per current champion (role champion, not left): its last
    # inbound day ≤ D, or the day it became champion when it never wrote in
    champion_reference_days: tuple[date, ...] = field(default_factory=tuple)
    former_champion_left: bool = False  # a contact that was champion has left_company
    nps_promoters_90d: int = 0
    nps_detractors_90d: int = 0
    nps_responses_90d: int = 0
    sentiment_sum_30d: float = 0.0
    sentiment_count_30d: int = 0
    support_tickets_30d: int = 0
    escalations_30d: int = 0


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def compute_kpis(w: WindowAggregates) -> dict[str, KpiValue]:
    """The KPI values of SPEC §4 (keys: :data:`shared.health.KPI_NAMES`, in that order)."""
    current_champion = len(w.champion_reference_days) > 0
    return {
        "dau": w.dau,
        "wau": w.wau,
        "mau": w.mau,
        "stickiness": None if w.mau == 0 else (w.user_days_30d / 30) / w.mau,
        "license_utilization": (None if not w.seats_purchased else w.mau / w.seats_purchased),
        "feature_adoption": _ratio(w.key_features_used_30d, w.key_features_configured),
        "features_used_30d": w.features_used_30d,
        "time_in_product_minutes": (None if w.mau == 0 else w.session_seconds_30d / 60 / w.mau),
        "days_since_last_activity": days_since(w.as_of, w.last_activity_day),
        "usage_trend": _ratio(w.wau, w.users_d34_d28),
        "active_stakeholders": w.inbound_contacts_30d,
        "touchpoints_30d": w.touchpoints_30d,
        "days_since_last_inbound": days_since(w.as_of, w.last_inbound_day),
        # never negative: a champion named after D (a past day rescored with
        # today's roles, or a role stamped just past midnight) is silent 0 days
        "champion_silence_days": (
            max(0, (w.as_of - max(w.champion_reference_days)).days) if current_champion else None
        ),
        "champion_left": w.former_champion_left and not current_champion,
        "nps": (
            None
            if w.nps_responses_90d == 0
            else 100 * (w.nps_promoters_90d - w.nps_detractors_90d) / w.nps_responses_90d
        ),
        "sentiment": _ratio(w.sentiment_sum_30d, w.sentiment_count_30d),
        "support_tickets_30d": w.support_tickets_30d,
        "escalations_30d": w.escalations_30d,
    }
