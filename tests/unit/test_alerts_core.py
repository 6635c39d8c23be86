"""The alerts pure core: rules, the per (account, rule) state machine, band changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import count, pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.alerts.rules import RULE_KPIS, Rule, compare, kpi_kind, load_rules, parse_duration
from services.alerts.state_machine import RuleState, band_change, evaluate
from shared.health import KPI_NAMES, HealthSnapshot

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DEFAULTS = Path(__file__).resolve().parents[2] / "services" / "alerts" / "default_rules.yaml"


def snap(rev: int = 1, at: datetime = T0, **kpis: Any) -> HealthSnapshot:
    fields: dict[str, Any] = {
        "score": kpis.pop("score", 70.0),
        "band": kpis.pop("band", "green"),
        "score_delta_7d": kpis.pop("score_delta_7d", None),
        "lifecycle_stage": kpis.pop("lifecycle_stage", "customer"),
        "in_grace_period": kpis.pop("in_grace_period", False),
        "previous_band": kpis.pop("previous_band", None),
    }
    return HealthSnapshot(
        account_id="acme",
        revision=rev,
        as_of=date(2026, 11, 1),
        evaluated_at=at,
        trigger="events",
        coverage=1.0,
        model_version="test",
        kpis=kpis,
        measures=[],
        **fields,
    )


def run(rule: Rule, values: list[Any], step: timedelta = timedelta(hours=1), **extra: Any):
    """Feed successive values of the rule's KPI; return the transitions, in order."""
    ids = count(1)
    state = RuleState()
    out = []
    for i, v in enumerate(values):
        s = snap(i + 1, T0 + i * step, **({rule.kpi: v} | extra))
        state, event = evaluate(rule, state, s, f"a{next(ids)}")
        out.append(event.transition if event else None)
    return out, state


LOW_UTIL = Rule(id="u", name="util", kpi="license_utilization", op="<", threshold=0.5)


def test_fires_once_while_the_condition_holds() -> None:
    transitions, state = run(LOW_UTIL, [0.6, 0.4, 0.3, 0.2])
    assert transitions == [None, "fired", None, None]
    assert state.is_open


def test_for_n_needs_consecutive_evaluations() -> None:
    rule = LOW_UTIL.model_copy(update={"for_evaluations": 3})
    transitions, _ = run(rule, [0.4, 0.4, 0.6, 0.4, 0.4, 0.4, 0.4])
    # the 0.6 resets the count: fires on the third breach in a row only
    assert transitions == [None, None, None, None, None, "fired", None]


def test_hysteresis_resolves_only_past_the_resolve_threshold() -> None:
    rule = LOW_UTIL.model_copy(update={"resolve_threshold": 0.6, "cooldown": 0})
    transitions, _ = run(rule, [0.4, 0.55, 0.5, 0.59, 0.6, 0.4])
    assert transitions == ["fired", None, None, None, "resolved", "fired"]


def test_resolves_at_the_threshold_itself_by_default() -> None:
    transitions, _ = run(LOW_UTIL.model_copy(update={"cooldown": 0}), [0.4, 0.5])
    assert transitions == ["fired", "resolved"]


def test_cooldown_blocks_refiring_after_resolve() -> None:
    rule = LOW_UTIL.model_copy(update={"cooldown": parse_duration("3h")})
    # one evaluation per hour: resolved at h1, breached again at h2, h3 (inside 3 h), h4 (not)
    transitions, _ = run(rule, [0.4, 0.7, 0.4, 0.4, 0.4])
    assert transitions == ["fired", "resolved", None, None, "fired"]


def test_null_values_neither_fire_nor_count_nor_resolve() -> None:
    rule = LOW_UTIL.model_copy(update={"for_evaluations": 2})
    transitions, _ = run(rule, [0.4, None, 0.4, None, 0.9])
    assert transitions == [None, None, "fired", None, "resolved"]


def test_grace_period_is_respected_by_default_and_can_be_ignored() -> None:
    transitions, _ = run(LOW_UTIL, [0.1, 0.1], in_grace_period=True)
    assert transitions == [None, None]
    rule = LOW_UTIL.model_copy(update={"respect_grace": False})
    transitions, _ = run(rule, [0.1, 0.1], in_grace_period=True)
    assert transitions == ["fired", None]


def test_lifecycle_stage_filter() -> None:
    rule = LOW_UTIL.model_copy(update={"lifecycle_stages": ["customer"]})
    assert run(rule, [0.1], lifecycle_stage="onboarding")[0] == [None]
    assert run(rule, [0.1], lifecycle_stage="customer")[0] == ["fired"]
    assert run(LOW_UTIL, [0.1], lifecycle_stage="onboarding")[0] == ["fired"]


def test_band_and_boolean_rules() -> None:
    red = Rule(name="red", kpi="band", op="==", threshold="red", cooldown=0)
    assert run(red, ["green", "red", "red", "yellow"])[0] == [None, "fired", None, "resolved"]
    left = Rule(name="left", kpi="champion_left", op="==", threshold=True)
    assert run(left, [False, True, True])[0] == [None, "fired", None]


def test_score_delta_rule() -> None:
    drop = Rule(name="drop", kpi="score_delta_7d", op="<=", threshold=-15, resolve_threshold=-10)
    assert run(drop, [-5, -15, -12, -9])[0] == [None, "fired", None, "resolved"]


@pytest.mark.parametrize(
    ("value", "op", "threshold", "expected"),
    [
        pytest.param(1, "<", 2.0, True, id="lt"),
        pytest.param(2, "<=", 2.0, True, id="le"),
        pytest.param(None, "<", 2.0, None, id="null"),
        pytest.param("red", "<", 2.0, None, id="band-vs-number"),
        pytest.param(3, "==", True, None, id="number-vs-bool"),
        pytest.param(True, "!=", False, True, id="bool-ne"),
    ],
)
def test_compare(value: Any, op: str, threshold: Any, expected: bool | None) -> None:
    assert compare(value, op, threshold) is expected


def test_band_change_uses_the_last_seen_band() -> None:
    assert band_change(snap(band="red"), "yellow") is not None
    assert band_change(snap(band="red"), "red") is None
    assert band_change(snap(band="red", previous_band="green"), None) is not None
    assert band_change(snap(band="red"), None) is None


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("24h", 86400), ("30m", 1800), ("90", 90), (45, 45), ("2d", 172800), ("500ms", 0.5)],
)
def test_durations(raw: Any, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"op": "<", "threshold": "red", "kpi": "nps"}, id="string-threshold"),
        pytest.param({"op": "<", "threshold": "red", "kpi": "band"}, id="band-ordering"),
        pytest.param({"op": "~", "threshold": 1, "kpi": "nps"}, id="bad-op"),
        pytest.param({"op": "<", "threshold": True, "kpi": "nps"}, id="bool-ordering"),
        pytest.param({"op": "<", "threshold": 1, "kpi": "nps", "cooldown": "soon"}, id="cooldown"),
        pytest.param({"op": "<", "threshold": 1, "kpi": "nps", "severity": "x"}, id="severity"),
        pytest.param({"op": "<", "threshold": 1, "kpi": "nps", "for_evaluations": 0}, id="n"),
        pytest.param({"op": "<", "threshold": float("inf"), "kpi": "nps"}, id="infinite"),
        pytest.param(
            {"op": "<", "threshold": 1, "kpi": "nps", "cooldown": 1e15}, id="huge-cooldown"
        ),
        pytest.param({"op": "<", "threshold": 1, "kpi": "nps", "cooldown": -5}, id="neg-cooldown"),
    ],
)
def test_invalid_rules_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Rule.model_validate({"name": "x"} | bad)


@pytest.mark.parametrize(
    ("bad", "field", "message"),
    [
        pytest.param(
            {"kpi": "licence_utilization", "op": "<", "threshold": 0.5},
            "kpi",
            "unknown KPI 'licence_utilization' (did you mean 'license_utilization'?)",
            id="typo",
        ),
        pytest.param(
            {"kpi": "nonsense", "op": "<", "threshold": 1},
            "kpi",
            "a rule's kpi is one of: dau, wau, mau,",
            id="unknown",
        ),
        pytest.param(
            {"kpi": "champion_left", "op": "<", "threshold": True},
            "op",
            "champion_left is true or false: compare it with == or !=",
            id="boolean-kpi-ordering",
        ),
        pytest.param(
            {"kpi": "champion_left", "op": "==", "threshold": 1},
            "threshold",
            "champion_left is true or false",
            id="boolean-kpi-number",
        ),
        pytest.param(
            {"kpi": "band", "op": "==", "threshold": 2},
            "threshold",
            "band is green, yellow or red",
            id="band-number",
        ),
        pytest.param(
            {"kpi": "band", "op": ">=", "threshold": "red"},
            "op",
            "band is green, yellow or red: compare it with == or !=",
            id="band-ordering",
        ),
        pytest.param(
            {"kpi": "nps", "op": "<", "threshold": "low"},
            "threshold",
            "nps is a number",
            id="number-kpi-string",
        ),
        pytest.param(
            {"kpi": "score", "op": "==", "threshold": True},
            "threshold",
            "score is a number",
            id="number-kpi-boolean",
        ),
        pytest.param(
            {"kpi": "nps", "op": "<", "threshold": 0, "resolve_threshold": "red"},
            "resolve_threshold",
            "nps is a number",
            id="resolve-threshold",
        ),
        pytest.param(
            {"kpi": "nps", "op": "<", "threshold": float("nan")},
            "threshold",
            "must be a finite number",
            id="nan",
        ),
    ],
)
def test_invalid_rules_name_the_field_at_fault(
    bad: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Rule.model_validate({"name": "x"} | bad)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert message in errors[0]["msg"]


def test_every_kpi_and_score_field_can_be_named_with_a_threshold_of_its_type() -> None:
    threshold = {"band": "red", "boolean": True, "number": 1.0}
    for kpi in (*KPI_NAMES, "score", "score_delta_7d", "band"):
        rule = Rule(name=kpi, kpi=kpi, op="==", threshold=threshold[kpi_kind(kpi)])
        assert rule.kpi == kpi
    # the allowed names are the snapshot's KPIs (one list, shared with scoring) + 3
    assert (*KPI_NAMES, "score", "score_delta_7d", "band") == RULE_KPIS


def test_a_rules_file_with_an_unknown_kpi_names_the_rule_and_the_field() -> None:
    data = [
        {"id": "ok", "name": "ok", "kpi": "nps", "op": "<", "threshold": 0},
        {"id": "typo", "name": "t", "kpi": "licence_utilization", "op": "<", "threshold": 0.5},
    ]
    with pytest.raises(ValueError, match=r"^rule #2 \(typo\): kpi: unknown KPI") as caught:
        load_rules(data)
    assert "\n" not in str(caught.value)


def test_ids_are_assigned_and_the_defaults_load() -> None:
    assert Rule(name="n", kpi="nps", op="<", threshold=0).id.startswith("rule_")
    rules = load_rules(yaml.safe_load(DEFAULTS.read_text()))
    kpis = {r.kpi for r in rules}
    assert {
        "license_utilization",
        "champion_silence_days",
        "champion_left",
        "active_stakeholders",
        "days_since_last_activity",
        "usage_trend",
        "score_delta_7d",
        "band",
        "nps",
    } <= kpis
    with pytest.raises(ValueError, match="duplicate"):
        load_rules([{"id": "a", "name": "a", "kpi": "nps", "op": "<", "threshold": 0}] * 2)


# --- properties ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=40),
    n=st.integers(1, 4),
    cooldown_hours=st.integers(0, 5),
    resolve=st.floats(0.5, 0.8),
)
def test_state_machine_invariants(
    values: list[float | None], n: int, cooldown_hours: int, resolve: float
) -> None:
    rule = LOW_UTIL.model_copy(
        update={
            "for_evaluations": n,
            "cooldown": cooldown_hours * 3600.0,
            "resolve_threshold": resolve,
        }
    )
    transitions, _ = run(rule, values)
    events = [(i, t) for i, t in enumerate(transitions) if t]
    # fired and resolved alternate, starting with fired: never two alerts open at once
    assert [t for _, t in events] == ["fired", "resolved"] * (len(events) // 2) + (
        ["fired"] if len(events) % 2 else []
    )
    for i, t in events:
        if t == "fired":
            # the last n non-null values, up to this one, all breached
            recent = [v for v in values[: i + 1] if v is not None][-n:]
            assert len(recent) == n and all(v < 0.5 for v in recent)
        else:
            assert values[i] is not None and values[i] >= resolve
    # no fire within the cooldown of a resolve (one evaluation per hour)
    for (i, t), (j, u) in pairwise(events):
        if t == "resolved" and u == "fired":
            assert j - i >= cooldown_hours
