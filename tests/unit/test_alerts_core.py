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
from sqlalchemy.exc import DBAPIError, StatementError

from services.alerts.consumer import is_data_error
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


def test_a_non_finite_value_is_treated_like_null() -> None:
    """NaN compares false with everything: ``not (nan < 0.5)`` used to resolve an open
    alert. A value that is not a finite number decides nothing, like null (snapshot
    validation refuses one; this is the rule's own guard, so the snapshots are built
    without validation)."""
    rule = LOW_UTIL.model_copy(update={"for_evaluations": 2})
    state, out = RuleState(), []
    for i, v in enumerate([0.4, float("nan"), 0.4, float("nan"), float("-inf"), 0.3]):
        s = snap(i + 1, T0 + timedelta(hours=i))
        s = s.model_copy(update={"kpis": {"license_utilization": v}})
        state, event = evaluate(rule, state, s, f"a{i}")
        out.append(event.transition if event else None)
    assert out == [None, None, "fired", None, None, None]
    assert state.is_open and state.consecutive == 3


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
        pytest.param(float("nan"), "<", 0.5, None, id="nan"),
        pytest.param(float("nan"), "!=", 0.5, None, id="nan-ne"),
        pytest.param(float("inf"), ">", 21.0, None, id="inf"),
        pytest.param(float("-inf"), "<", 0.0, None, id="minus-inf"),
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
        pytest.param(
            {"kpi": "license_utilization", "op": "<", "threshold": 0.5, "resolve_threshold": 0.4},
            "resolve_threshold",
            "with < 0.5 the resolve_threshold must be at or above the threshold: 0.4 would",
            id="resolve-below-lt",
        ),
        pytest.param(
            {"kpi": "score_delta_7d", "op": "<=", "threshold": -15, "resolve_threshold": -20},
            "resolve_threshold",
            "with <= -15 the resolve_threshold must be at or above the threshold",
            id="resolve-below-le",
        ),
        pytest.param(
            {"kpi": "champion_silence_days", "op": ">", "threshold": 21, "resolve_threshold": 30},
            "resolve_threshold",
            "with > 21 the resolve_threshold must be at or below the threshold: 30 would",
            id="resolve-above-gt",
        ),
        pytest.param(
            {"kpi": "days_since_last_activity", "op": ">=", "threshold": 7, "resolve_threshold": 8},
            "resolve_threshold",
            "with >= 7 the resolve_threshold must be at or below the threshold",
            id="resolve-above-ge",
        ),
        pytest.param(
            {"kpi": "band", "op": "==", "threshold": "red", "resolve_threshold": "yellow"},
            "resolve_threshold",
            "with == red the resolve_threshold must equal the threshold (or be omitted)",
            id="resolve-other-band",
        ),
        pytest.param(
            {"kpi": "champion_left", "op": "==", "threshold": True, "resolve_threshold": False},
            "resolve_threshold",
            "with == true the resolve_threshold must equal the threshold (or be omitted)",
            id="resolve-other-boolean",
        ),
        pytest.param(
            {"kpi": "nps", "op": "!=", "threshold": 0, "resolve_threshold": 1},
            "resolve_threshold",
            "with != 0 the resolve_threshold must equal the threshold",
            id="resolve-ne",
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


@pytest.mark.parametrize(
    ("rule", "values", "expected"),
    [
        pytest.param(
            {"kpi": "license_utilization", "op": "<", "threshold": 0.5, "resolve_threshold": 0.6},
            [0.45, 0.55, 0.6],
            [("fired"), None, "resolved"],
            id="lt-above",
        ),
        pytest.param(
            {"kpi": "nps", "op": "<=", "threshold": 0, "resolve_threshold": 0},
            [0, 0, 1],
            ["fired", None, "resolved"],
            id="le-equal",
        ),
        pytest.param(
            {"kpi": "champion_silence_days", "op": ">", "threshold": 21, "resolve_threshold": 14},
            [22, 15, 14],
            ["fired", None, "resolved"],
            id="gt-below",
        ),
        pytest.param(
            {"kpi": "band", "op": "==", "threshold": "red", "resolve_threshold": "red"},
            ["red", "red", "yellow"],
            ["fired", None, "resolved"],
            id="band-same",
        ),
        pytest.param(
            {"kpi": "champion_left", "op": "!=", "threshold": False, "resolve_threshold": False},
            [True, True, False],
            ["fired", None, "resolved"],
            id="boolean-same",
        ),
    ],
)
def test_a_resolve_threshold_on_the_recovered_side_is_accepted(
    rule: dict[str, Any], values: list[Any], expected: list[str | None]
) -> None:
    """The alert stays open while the condition holds, and resolves past the
    resolve threshold (the rules a wrong-side resolve_threshold would make flap)."""
    assert run(Rule.model_validate({"name": "x", "cooldown": 0} | rule), values)[0] == expected


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


# --- the snapshot alerts consumes -------------------------------------------------


def _snapshot_json(**changes: Any) -> dict[str, Any]:
    return snap(nps=-5).model_dump(mode="json") | changes


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        pytest.param({"account_id": "a\u0000b"}, "account_id", "NUL", id="nul-account-id"),
        pytest.param({"account_name": "Acme\u0000"}, "account_name", "NUL", id="nul-name"),
        pytest.param({"csm": "\u0000"}, "csm", "NUL", id="nul-csm"),
        pytest.param({"lifecycle_stage": "x\u0000"}, "lifecycle_stage", "NUL", id="nul-stage"),
        pytest.param({"model_version": "v\u0000"}, "model_version", "NUL", id="nul-model"),
        pytest.param({"kpis": {"n\u0000ps": 1}}, "kpis.n\u0000ps.[key]", "NUL", id="nul-kpi-name"),
        pytest.param({"score": float("nan")}, "score", "finite", id="nan-score"),
        pytest.param({"score_delta_7d": float("-inf")}, "score_delta_7d", "finite", id="inf-delta"),
        pytest.param({"coverage": float("inf")}, "coverage", "finite", id="inf-coverage"),
        pytest.param({"kpis": {"nps": float("nan")}}, "kpis.nps.float", "finite", id="nan-kpi"),
    ],
)
def test_a_snapshot_alerts_could_not_store_is_not_a_snapshot(
    changes: dict[str, Any], field: str, message: str
) -> None:
    """NUL characters (PostgreSQL text and JSON cannot hold them) and non-finite numbers
    (a JSON column cannot, and NaN decides nothing) fail validation, so the consumer
    dead-letters the message instead of failing its batch's transaction."""
    with pytest.raises(ValidationError) as caught:
        HealthSnapshot.model_validate(_snapshot_json(**changes))
    locs = [".".join(str(p) for p in e["loc"]) for e in caught.value.errors()]
    assert field in locs, locs
    assert message in caught.value.errors()[locs.index(field)]["msg"]


def test_a_nan_literal_in_the_json_of_a_snapshot_is_refused() -> None:
    raw = snap(nps=-5).encode().replace(b'"nps":-5', b'"nps":NaN')
    assert b"NaN" in raw
    with pytest.raises(ValidationError, match="finite number"):
        HealthSnapshot.decode(raw)
    good = HealthSnapshot.decode(snap(nps=-5, champion_left=True, dau=3, stickiness=0.5).encode())
    assert good.kpis == {"nps": -5, "champion_left": True, "dau": 3, "stickiness": 0.5}


class _PgError(Exception):
    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"server said {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("exc", "data"),
    [
        pytest.param(DBAPIError("INSERT", {}, _PgError("22021")), True, id="nul-in-text"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("22P02")), True, id="nan-in-json"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("23514")), True, id="check-violation"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("54000")), True, id="index-row-too-big"),
        pytest.param(DBAPIError("INSERT", {}, ValueError("bad argument")), True, id="encoding"),
        pytest.param(StatementError("bind", "INSERT", {}, TypeError("json")), True, id="bind"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("57P01")), False, id="admin-shutdown"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("08006")), False, id="connection-failure"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("40P01")), False, id="deadlock"),
        pytest.param(DBAPIError("INSERT", {}, _PgError("42P01")), False, id="not-migrated"),
        pytest.param(
            DBAPIError("INSERT", {}, _PgError("22021"), connection_invalidated=True),
            False,
            id="connection-invalidated",
        ),
        pytest.param(DBAPIError("INSERT", {}, ConnectionResetError()), False, id="reset"),
        pytest.param(ConnectionRefusedError(), False, id="refused"),
        pytest.param(TimeoutError(), False, id="timeout"),
    ],
)
def test_only_data_the_database_refuses_is_dead_lettered(exc: BaseException, data: bool) -> None:
    """A batch whose data PostgreSQL refuses is retried one snapshot at a time and the
    refused one dead-lettered; an outage (or a bug) must never dead-letter anything."""
    assert is_data_error(exc) is data
