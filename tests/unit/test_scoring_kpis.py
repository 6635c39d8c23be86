"""Each KPI of SPEC §4 from window aggregates, table-driven; null when undefined."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from services.scoring.kpis import WindowAggregates, compute_kpis
from shared.health import BOOLEAN_KPIS, KPI_NAMES

D = date(2026, 4, 30)


def w(**kw: object) -> WindowAggregates:
    return WindowAggregates(as_of=D, **kw)  # type: ignore[arg-type]


CASES = [
    pytest.param(w(dau=3), "dau", 3, id="dau"),
    pytest.param(w(wau=5), "wau", 5, id="wau"),
    pytest.param(w(mau=9), "mau", 9, id="mau"),
    pytest.param(w(mau=10, user_days_30d=60), "stickiness", 0.2, id="stickiness"),
    pytest.param(w(mau=0, user_days_30d=0), "stickiness", None, id="stickiness-null-no-mau"),
    pytest.param(w(mau=5, seats_purchased=20), "license_utilization", 0.25, id="licence"),
    pytest.param(w(mau=5, seats_purchased=None), "license_utilization", None, id="licence-unknown"),
    pytest.param(w(mau=5, seats_purchased=0), "license_utilization", None, id="licence-zero"),
    pytest.param(w(mau=30, seats_purchased=20), "license_utilization", 1.5, id="licence-over"),
    pytest.param(
        w(key_features_configured=4, key_features_used_30d=3),
        "feature_adoption",
        0.75,
        id="adoption",
    ),
    pytest.param(w(key_features_configured=0), "feature_adoption", None, id="adoption-no-keys"),
    pytest.param(w(features_used_30d=7), "features_used_30d", 7, id="features"),
    pytest.param(w(mau=4, session_seconds_30d=4800), "time_in_product_minutes", 20.0, id="time"),
    pytest.param(w(mau=0), "time_in_product_minutes", None, id="time-null"),
    pytest.param(w(last_activity_day=date(2026, 4, 20)), "days_since_last_activity", 10, id="idle"),
    pytest.param(w(), "days_since_last_activity", None, id="idle-never"),
    pytest.param(w(wau=6, users_d34_d28=4), "usage_trend", 1.5, id="trend"),
    pytest.param(w(wau=6, users_d34_d28=0), "usage_trend", None, id="trend-null"),
    pytest.param(w(inbound_contacts_30d=2), "active_stakeholders", 2, id="stakeholders"),
    pytest.param(w(touchpoints_30d=11), "touchpoints_30d", 11, id="touchpoints"),
    pytest.param(w(last_inbound_day=date(2026, 4, 28)), "days_since_last_inbound", 2, id="inbound"),
    pytest.param(w(), "days_since_last_inbound", None, id="inbound-never"),
    pytest.param(
        w(champion_reference_days=(date(2026, 4, 1), date(2026, 4, 16))),
        "champion_silence_days",
        14,
        id="silence-latest-champion",
    ),
    pytest.param(w(), "champion_silence_days", None, id="silence-no-champion"),
    pytest.param(  # named after D (a past day rescored with today's roles)
        w(champion_reference_days=(D + timedelta(days=3),)),
        "champion_silence_days",
        0,
        id="silence-champion-named-after-the-day",
    ),
    pytest.param(w(former_champion_left=True), "champion_left", True, id="champion-left"),
    pytest.param(
        w(former_champion_left=True, champion_reference_days=(D,)),
        "champion_left",
        False,
        id="champion-left-but-replaced",
    ),
    pytest.param(w(), "champion_left", False, id="champion-left-never"),
    pytest.param(
        w(nps_promoters_90d=5, nps_detractors_90d=2, nps_responses_90d=10), "nps", 30.0, id="nps"
    ),
    pytest.param(w(), "nps", None, id="nps-none"),
    pytest.param(w(sentiment_sum_30d=-1.5, sentiment_count_30d=3), "sentiment", -0.5, id="sent"),
    pytest.param(w(), "sentiment", None, id="sentiment-none"),
    pytest.param(w(support_tickets_30d=3), "support_tickets_30d", 3, id="tickets"),
    pytest.param(w(escalations_30d=1), "escalations_30d", 1, id="escalations"),
]


@pytest.mark.parametrize(("windows", "kpi", "value"), CASES)
def test_kpi(windows: WindowAggregates, kpi: str, value: object) -> None:
    got = compute_kpis(windows)[kpi]
    if isinstance(value, float):
        assert got == pytest.approx(value)
    else:
        assert got == value


def test_every_kpi_of_the_spec_is_computed() -> None:
    assert tuple(compute_kpis(w())) == KPI_NAMES
    assert len(KPI_NAMES) == 19


def test_the_boolean_kpis_are_the_ones_computed_as_booleans() -> None:
    # alert rules pair a KPI's type with its operator and threshold through BOOLEAN_KPIS
    values = compute_kpis(w(former_champion_left=True))
    assert {k for k, v in values.items() if isinstance(v, bool)} == BOOLEAN_KPIS
