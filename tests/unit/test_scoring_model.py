"""Score model: linear points, inversion, renormalisation, coverage, grace, profiles,
bands, validation of the YAML file."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scoring import score_model
from services.scoring.score_model import (
    ModelError,
    evaluate,
    in_grace_period,
    load_model,
    parse_model,
    points,
)

D = date(2026, 4, 30)


def model(**kw: Any) -> Any:
    base: dict[str, Any] = {
        "version": "t1",
        "measures": [
            {"kpi": "license_utilization", "weight": 3, "red": 0.2, "green": 0.8, "adoption": True},
            {"kpi": "days_since_last_activity", "weight": 1, "red": 14, "green": 0},
        ],
    }
    return parse_model(base | kw)


@pytest.mark.parametrize(
    ("value", "red", "green", "expected"),
    [
        pytest.param(0.5, 0.2, 0.8, 50.0, id="middle"),
        pytest.param(0.2, 0.2, 0.8, 0.0, id="at-red"),
        pytest.param(0.0, 0.2, 0.8, 0.0, id="beyond-red"),
        pytest.param(0.8, 0.2, 0.8, 100.0, id="at-green"),
        pytest.param(3.0, 0.2, 0.8, 100.0, id="beyond-green"),
        pytest.param(7, 14, 0, 50.0, id="inverted-middle"),
        pytest.param(20, 14, 0, 0.0, id="inverted-beyond-red"),
        pytest.param(0, 14, 0, 100.0, id="inverted-green"),
        pytest.param(True, 1, 0, 0.0, id="bool-true-is-red"),
        pytest.param(False, 1, 0, 100.0, id="bool-false-is-green"),
        pytest.param(None, 0, 1, None, id="null"),
    ],
)
def test_points(value: Any, red: float, green: float, expected: float | None) -> None:
    got = points(value, red, green)
    assert got == (None if expected is None else pytest.approx(expected))


def test_score_weights_and_explanation() -> None:
    ev = evaluate(
        model(),
        {"license_utilization": 0.5, "days_since_last_activity": 7},
        lifecycle_stage="active",
        onboarding_completed_at=None,
        as_of=D,
    )
    assert ev.score == pytest.approx(0.75 * 50 + 0.25 * 50)
    lic = ev.measures[0]
    assert (lic.weight, lic.points, lic.contribution, lic.left_on_table) == (
        0.75,
        50.0,
        37.5,
        37.5,
    )
    assert ev.coverage == 1.0 and ev.band == "yellow" and ev.model_version == "t1"


def test_null_kpi_is_left_out_and_the_rest_renormalised() -> None:
    ev = evaluate(
        model(min_coverage=0.2),
        {"license_utilization": None, "days_since_last_activity": 0},
        lifecycle_stage="active",
        onboarding_completed_at=None,
        as_of=D,
    )
    assert ev.coverage == 0.25
    assert ev.score == 100.0 and ev.band == "green"
    assert ev.measures[0].points is None and ev.measures[0].weight == 0.0
    assert ev.measures[1].weight == 1.0


def test_below_min_coverage_the_score_is_null() -> None:
    ev = evaluate(
        model(min_coverage=0.5),
        {"license_utilization": None, "days_since_last_activity": 0},
        lifecycle_stage="active",
        onboarding_completed_at=None,
        as_of=D,
    )
    assert ev.score is None and ev.band is None and ev.coverage == 0.25


def test_adoption_measures_wait_for_the_grace_period() -> None:
    kpis = {"license_utilization": 0.0, "days_since_last_activity": 0}
    onboarding = evaluate(
        model(), kpis, lifecycle_stage="onboarding", onboarding_completed_at=None, as_of=D
    )
    assert onboarding.in_grace_period and onboarding.score == 100.0
    assert onboarding.coverage == 1.0  # measures not applied do not count against coverage
    done = datetime(2026, 4, 25, tzinfo=UTC)
    assert (
        evaluate(
            model(), kpis, lifecycle_stage="active", onboarding_completed_at=done, as_of=D
        ).score
        == 100.0
    )
    later = evaluate(
        model(),
        kpis,
        lifecycle_stage="active",
        onboarding_completed_at=done,
        as_of=date(2026, 5, 2),
    )
    assert not later.in_grace_period and later.score == 25.0


@pytest.mark.parametrize(
    ("stage", "completed", "as_of", "grace"),
    [
        pytest.param("trial", None, D, True, id="trial"),
        pytest.param("poc", None, D, True, id="poc"),
        pytest.param("onboarding", None, D, True, id="onboarding"),
        pytest.param("active", None, D, False, id="active-no-date"),
        pytest.param("active", datetime(2026, 4, 24, tzinfo=UTC), D, True, id="day-6"),
        pytest.param("active", datetime(2026, 4, 23, tzinfo=UTC), D, False, id="day-7"),
        pytest.param(  # 04-24 in UTC: its UTC day counts, not New York's 04-23
            "active",
            datetime(2026, 4, 23, 22, tzinfo=timezone(timedelta(hours=-5))),
            D,
            True,
            id="day-6-in-utc",
        ),
        pytest.param(None, None, D, False, id="unknown-stage"),
    ],
)
def test_grace_period(
    stage: str | None, completed: datetime | None, as_of: date, grace: bool
) -> None:
    assert in_grace_period(stage, completed, as_of, 7) is grace


def test_groups_renormalise_inside_then_across() -> None:
    m = parse_model(
        {
            "version": "g",
            "min_coverage": 0,
            "groups": [
                {
                    "name": "usage",
                    "weight": 60,
                    "measures": [
                        {"kpi": "dau", "weight": 1, "red": 0, "green": 10},
                        {"kpi": "wau", "weight": 1, "red": 0, "green": 10},
                    ],
                },
                {
                    "name": "voice",
                    "weight": 40,
                    "measures": [
                        {"kpi": "nps", "weight": 1, "red": -100, "green": 100},
                    ],
                },
            ],
        }
    )
    ev = evaluate(
        m,
        {"dau": 10, "wau": None, "nps": None},
        lifecycle_stage=None,
        onboarding_completed_at=None,
        as_of=D,
    )
    assert ev.coverage == 0.3
    assert ev.score == 100.0
    assert [x.group for x in ev.measures] == ["usage", "usage", "voice"]
    ev = evaluate(
        m,
        {"dau": 10, "wau": None, "nps": 0},
        lifecycle_stage=None,
        onboarding_completed_at=None,
        as_of=D,
    )
    assert ev.measures[0].weight == 0.6 and ev.measures[2].weight == 0.4
    assert ev.score == pytest.approx(60 + 20)


def test_profiles_replace_measures_by_lifecycle_stage() -> None:
    m = model(profiles={"trial": {"measures": [{"kpi": "wau", "red": 0, "green": 4}]}})
    ev = evaluate(m, {"wau": 2}, lifecycle_stage="trial", onboarding_completed_at=None, as_of=D)
    assert [x.kpi for x in ev.measures] == ["wau"] and ev.score == 50.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            {"measures": [{"kpi": "nope", "red": 0, "green": 1}]}, "unknown kpi", id="unknown-kpi"
        ),
        pytest.param(
            {"measures": [{"kpi": "dau", "red": 1, "green": 1}]},
            "must differ",
            id="red-equals-green",
        ),
        pytest.param(
            {"measures": [{"kpi": "dau", "red": 0, "green": 1, "weight": 0}]},
            "greater than 0",
            id="zero-weight",
        ),
        pytest.param({"bands": {"green": 30, "yellow": 60}}, "yellow", id="bands-order"),
        pytest.param({"min_coverage": 2}, "min_coverage", id="coverage-range"),
        pytest.param(
            {"profiles": {"vip": {"measures": [{"kpi": "dau", "red": 0, "green": 1}]}}},
            "unknown lifecycle",
            id="bad-profile",
        ),
        pytest.param({"surprise": 1}, "surprise", id="unknown-field"),
        pytest.param(
            {"measures": [{"kpi": "dau", "red": float("nan"), "green": 1}]},
            "finite number",
            id="nan-threshold",
        ),
        pytest.param(
            {"measures": [{"kpi": "dau", "red": 0, "green": 1, "weight": float("inf")}]},
            "finite number",
            id="infinite-weight",
        ),
        pytest.param(
            {"groups": [{"name": "x", "measures": [{"kpi": "dau", "red": 0, "green": 1}]}]},
            "either measures or groups",
            id="both",
        ),
    ],
)
def test_invalid_models_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        model(**change)


def test_the_shipped_model_loads_and_a_broken_file_is_refused(tmp_path: Path) -> None:
    shipped = load_model()
    assert shipped.key_features and shipped.grace_days == 7 and shipped.min_coverage == 0.5
    assert set(shipped.profiles) == {"trial", "poc"}
    bad = tmp_path / "m.yaml"
    bad.write_text("version: [unclosed")
    with pytest.raises(ModelError, match="cannot read"):
        load_model(bad)


kpi_values = st.one_of(st.none(), st.floats(min_value=-50, max_value=200, allow_nan=False))


@given(
    lic=kpi_values,
    idle=kpi_values,
    nps=kpi_values,
)
def test_property_score_is_bounded_and_weights_sum_to_one(
    lic: float | None, idle: float | None, nps: float | None
) -> None:
    m = parse_model(
        {
            "version": "p",
            "min_coverage": 0,
            "groups": [
                {
                    "name": "a",
                    "weight": 2,
                    "measures": [
                        {"kpi": "license_utilization", "weight": 2, "red": 0.2, "green": 0.8},
                        {"kpi": "days_since_last_activity", "weight": 1, "red": 14, "green": 0},
                    ],
                },
                {
                    "name": "b",
                    "weight": 1,
                    "measures": [{"kpi": "nps", "weight": 1, "red": -20, "green": 40}],
                },
            ],
        }
    )
    kpis = {"license_utilization": lic, "days_since_last_activity": idle, "nps": nps}
    ev = evaluate(m, kpis, lifecycle_stage=None, onboarding_completed_at=None, as_of=D)
    if all(v is None for v in kpis.values()):
        assert ev.score is None and ev.coverage == 0
        return
    assert ev.score is not None and 0 <= ev.score <= 100
    assert sum(x.weight for x in ev.measures) == pytest.approx(1.0, abs=1e-5)
    total = sum(x.contribution + x.left_on_table for x in ev.measures)
    assert total == pytest.approx(100.0, abs=0.01)


@given(lic=kpi_values, idle=kpi_values, nps=kpi_values)
def test_property_each_measure_scores_its_points_and_null_ones_are_left_out(
    lic: float | None, idle: float | None, nps: float | None
) -> None:
    """The evaluation's inlined clamp equals :func:`points` (inverted scale included),
    and a null KPI's measure is left out with nothing from another account's
    evaluation (its result is shared between evaluations of one plan)."""
    m = load_model()
    kpis = {"license_utilization": lic, "days_since_last_activity": idle, "nps": nps}
    first = evaluate(m, kpis, lifecycle_stage="active", onboarding_completed_at=None, as_of=D)
    other = evaluate(m, {}, lifecycle_stage="active", onboarding_completed_at=None, as_of=D)
    bounds = {x.kpi: (x.red, x.green) for g in m.measures_for("active") for x in g.measures}
    weights = score_model._weights(
        score_model._plan(m, "active", False),
        tuple(kpis.get(x.kpi) is not None for x in first.measures),
    )
    score_sum = 0.0
    for got, eff in zip(first.measures, weights.effective, strict=True):
        value = kpis.get(got.kpi)
        if value is None:
            assert (got.value, got.points, got.weight, got.contribution) == (None, None, 0, 0)
        else:
            pts = points(value, *bounds[got.kpi])
            assert pts is not None and eff is not None
            assert got.points == round(pts, 2)
            # the explanation as plain rounding gives it (points at either end of the
            # scale take precomputed values: they must be the same numbers)
            assert (got.contribution, got.left_on_table) == (
                round(pts * eff, 4),
                round((100.0 - pts) * eff, 4),
            )
            score_sum += pts * eff
    if first.score is not None:
        assert first.score == round(score_sum, 2)
    assert all(x.value is None and x.points is None for x in other.measures)
