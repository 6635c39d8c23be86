"""The score model of SPEC §5: load and validate the YAML file, evaluate KPIs.

Pure: no I/O except :func:`load_model` reading one file. A model is
``measures`` (or ``groups`` of measures with group weights), ``bands``,
``key_features``, ``grace_days``, ``min_coverage``, optional ``profiles`` by
``lifecycle_stage`` (each replaces the measures/groups) and a ``version``.
A measure marked ``adoption: true`` is an *adoption* measure: it is not applied
during the grace period (SPEC §5).

Weights: a measure's nominal weight is (its group's share of the group
weights) × (its share of its group's measure weights). Measures whose KPI is
null are left out and the rest are renormalised, first inside their group, then
across groups that still have data. ``coverage`` is the nominal weight of the
measures with data; below ``min_coverage`` the score is null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.scoring.kpis import KpiValue
from shared.health import KPI_NAMES, Band

DEFAULT_MODEL_PATH = Path(__file__).with_name("default_model.yaml")
GRACE_STAGES = frozenset({"trial", "poc", "onboarding"})


class ModelError(ValueError):
    """The score model file is unreadable or invalid (message says where and why)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Measure(_Strict):
    kpi: str
    weight: Annotated[float, Field(gt=0)] = 1.0
    red: float
    green: float
    adoption: bool = False

    @model_validator(mode="after")
    def _check(self) -> Measure:
        if self.kpi not in KPI_NAMES:
            raise ValueError(f"unknown kpi {self.kpi!r}; known: {', '.join(KPI_NAMES)}")
        if self.red == self.green:
            raise ValueError(f"measure {self.kpi}: red and green must differ")
        return self


class Group(_Strict):
    name: str
    weight: Annotated[float, Field(gt=0)] = 1.0
    measures: Annotated[list[Measure], Field(min_length=1)]


class MeasureSet(_Strict):
    """Either flat ``measures`` or ``groups`` (not both)."""

    measures: list[Measure] | None = None
    groups: list[Group] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> MeasureSet:
        if (self.measures is None) == (self.groups is None):
            raise ValueError("give either measures or groups")
        if self.measures is not None and not self.measures:
            raise ValueError("measures must not be empty")
        if self.groups is not None and not self.groups:
            raise ValueError("groups must not be empty")
        kpis = [m.kpi for g in self.as_groups() for m in g.measures]
        dup = {k for k in kpis if kpis.count(k) > 1}
        if dup:
            raise ValueError(f"kpi used by more than one measure: {', '.join(sorted(dup))}")
        return self

    def as_groups(self) -> list[Group]:
        if self.groups is not None:
            return self.groups
        return [Group(name="", weight=1.0, measures=self.measures or [])]


class Bands(_Strict):
    green: Annotated[float, Field(ge=0, le=100)] = 70
    yellow: Annotated[float, Field(ge=0, le=100)] = 40

    @model_validator(mode="after")
    def _order(self) -> Bands:
        if self.yellow > self.green:
            raise ValueError("bands: yellow must not be above green")
        return self


class ScoreModel(MeasureSet):
    version: Annotated[str, Field(min_length=1, max_length=100)]
    bands: Bands = Bands()
    key_features: list[str] = []
    grace_days: Annotated[int, Field(ge=0, le=365)] = 7
    min_coverage: Annotated[float, Field(ge=0, le=1)] = 0.5
    profiles: dict[str, MeasureSet] = {}

    @model_validator(mode="after")
    def _stages(self) -> ScoreModel:
        stages = {"trial", "poc", "onboarding", "active", "churned"}
        bad = set(self.profiles) - stages
        if bad:
            raise ValueError(f"profiles for unknown lifecycle stages: {', '.join(sorted(bad))}")
        return self

    def measures_for(self, lifecycle_stage: str | None) -> list[Group]:
        chosen = self.profiles.get(lifecycle_stage or "", self)
        return chosen.as_groups()

    def band(self, score: float | None) -> Band | None:
        if score is None:
            return None
        if score >= self.bands.green:
            return "green"
        if score >= self.bands.yellow:
            return "yellow"
        return "red"


def parse_model(data: Any) -> ScoreModel:
    try:
        return ScoreModel.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'model'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelError(f"invalid score model: {problems}") from None


def load_model(path: Path | str | None = None) -> ScoreModel:
    """Read and validate a model file (default: the shipped model)."""
    p = Path(path) if path else DEFAULT_MODEL_PATH
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read score model {p}: {exc}") from exc
    return parse_model(data)


def points(value: KpiValue, red: float, green: float) -> float | None:
    """0 at or beyond ``red``, 100 at or beyond ``green``, linear between (works for
    inverted scales where red > green). Booleans count as 1/0; None stays None."""
    if value is None:
        return None
    v = float(value)
    t = (v - red) / (green - red)
    return 100.0 * min(1.0, max(0.0, t))


def in_grace_period(
    lifecycle_stage: str | None,
    onboarding_completed_at: datetime | None,
    as_of: date,
    grace_days: int,
) -> bool:
    """True while the stage is trial/poc/onboarding, or until ``grace_days`` days after
    ``onboarding_completed_at`` (the day it completed counts as day 0)."""
    if lifecycle_stage in GRACE_STAGES:
        return True
    if onboarding_completed_at is None:
        return False
    completed = onboarding_completed_at.astimezone(UTC).date()  # the UTC day, as D is
    return as_of < completed + timedelta(days=grace_days)


@dataclass(slots=True)
class MeasureScore:
    """One measure evaluated (the fields of :class:`shared.health.MeasureResult`; a
    plain dataclass because scoring builds thousands per batch)."""

    kpi: str
    group: str | None
    value: KpiValue
    points: float | None  # 0–100; None when the measure was left out
    weight: float  # effective weight after renormalisation (0 when left out)
    contribution: float  # points × weight, in score points
    left_on_table: float  # (100 − points) × weight, in score points

    def as_dict(self) -> dict[str, Any]:
        return {
            "kpi": self.kpi,
            "group": self.group,
            "value": self.value,
            "points": self.points,
            "weight": self.weight,
            "contribution": self.contribution,
            "left_on_table": self.left_on_table,
        }


@dataclass(slots=True)
class Evaluation:
    score: float | None
    band: Band | None
    coverage: float
    model_version: str
    in_grace_period: bool
    measures: list[MeasureScore]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The measures of one (model, lifecycle stage, grace) combination, flattened once."""

    shown: tuple[tuple[str, str | None, float, float], ...]  # kpi, group, red, green
    # per shown measure: the result when its KPI is null (shared by every evaluation
    # of this plan: most measures of a young account are null; never mutated)
    left_out: tuple[MeasureScore, ...]
    # applied groups: (group weight, Σ measure weights, ((kpi, measure weight), ...))
    applied: tuple[tuple[float, float, tuple[tuple[str, float], ...]], ...]
    total_group_weight: float
    # which shown measures have a value → their weights (see _weights); few distinct
    # patterns occur, and renormalising was a third of an evaluation
    weights: dict[tuple[bool, ...], _Weights] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Weights:
    coverage: float
    with_data: bool  # some applied measure has a value
    effective: tuple[float | None, ...]  # per shown measure; None: left out
    shown: tuple[float, ...]  # the same, rounded as the explanation shows it (0 left out)
    # per shown measure: round(100 × effective, 4), what a measure at green contributes
    # and one at red leaves on the table (most measures sit at either end: their
    # explanation then needs no rounding per evaluation)
    whole: tuple[float, ...]


_PLANS: dict[tuple[int, str | None, bool], tuple[ScoreModel, _Plan]] = {}
_MAX_PATTERNS = 4096


def _plan(model: ScoreModel, lifecycle_stage: str | None, grace: bool) -> _Plan:
    key = (id(model), lifecycle_stage, grace)
    cached = _PLANS.get(key)
    if cached is not None and cached[0] is model:
        return cached[1]
    groups = model.measures_for(lifecycle_stage)
    shown = tuple((m.kpi, g.name or None, m.red, m.green) for g in groups for m in g.measures)
    applied = []
    for g in groups:
        ms = tuple((m.kpi, m.weight) for m in g.measures if not (grace and m.adoption))
        if ms:
            applied.append((g.weight, sum(w for _, w in ms), ms))
    left_out = tuple(
        MeasureScore(kpi, group, None, None, 0.0, 0.0, 0.0) for kpi, group, _, _ in shown
    )
    plan = _Plan(shown, left_out, tuple(applied), sum(a[0] for a in applied))
    _PLANS[key] = (model, plan)
    return plan


def _weights(plan: _Plan, present: tuple[bool, ...]) -> _Weights:
    """Coverage and effective weights when the shown measures flagged in ``present``
    have a value: groups and measures without data are left out and the others
    renormalised (SPEC §5)."""
    cached = plan.weights.get(present)
    if cached is not None:
        return cached
    has = {kpi for (kpi, _, _, _), p in zip(plan.shown, present, strict=True) if p}
    coverage = 0.0
    with_data: list[tuple[float, float, list[tuple[str, float]]]] = []
    for group_w, group_m_w, ms in plan.applied:
        have = [(kpi, w) for kpi, w in ms if kpi in has]
        if have:
            have_w = sum(w for _, w in have)
            coverage += (group_w / plan.total_group_weight) * (have_w / group_m_w)
            with_data.append((group_w, have_w, have))
    effective: dict[str, float] = {}
    data_group_w = sum(g[0] for g in with_data)
    for group_w, have_w, have in with_data:
        for kpi, w in have:
            effective[kpi] = (group_w / data_group_w) * (w / have_w)
    eff = tuple(effective.get(kpi) for kpi, _, _, _ in plan.shown)
    out = _Weights(
        coverage=round(coverage, 6),
        with_data=bool(with_data),
        effective=eff,
        shown=tuple(0.0 if e is None else round(e, 6) for e in eff),
        whole=tuple(0.0 if e is None else round(100.0 * e, 4) for e in eff),
    )
    if len(plan.weights) < _MAX_PATTERNS:
        plan.weights[present] = out
    return out


def evaluate(
    model: ScoreModel,
    kpis: Mapping[str, KpiValue],
    *,
    lifecycle_stage: str | None,
    onboarding_completed_at: datetime | None,
    as_of: date,
) -> Evaluation:
    grace = in_grace_period(lifecycle_stage, onboarding_completed_at, as_of, model.grace_days)
    plan = _plan(model, lifecycle_stage, grace)
    get = kpis.get
    values = [get(kpi) for kpi, _, _, _ in plan.shown]
    weights = _weights(plan, tuple(v is not None for v in values))
    coverage = weights.coverage
    results: list[MeasureScore] = []
    score_sum = 0.0
    for (kpi, group, red, green), value, eff, eff_shown, whole, left_out in zip(
        plan.shown,
        values,
        weights.effective,
        weights.shown,
        weights.whole,
        plan.left_out,
        strict=True,
    ):
        if value is None:
            results.append(left_out)
            continue
        if eff is None:  # a value, but the measure does not apply (grace period)
            results.append(MeasureScore(kpi, group, value, None, 0.0, 0.0, 0.0))
            continue
        t = (float(value) - red) / (green - red)  # 0 at red, 1 at green; clamped below
        if 0.0 < t < 1.0:
            pts = 100.0 * t
            contribution = pts * eff
            score_sum += contribution
            results.append(
                MeasureScore(
                    kpi,
                    group,
                    value,
                    round(pts, 2),
                    eff_shown,
                    round(contribution, 4),
                    round((100.0 - pts) * eff, 4),
                )
            )
        elif t >= 1.0:  # at green or beyond: what round() would give, precomputed
            score_sum += 100.0 * eff
            results.append(MeasureScore(kpi, group, value, 100.0, eff_shown, whole, 0.0))
        else:  # at red or beyond
            results.append(MeasureScore(kpi, group, value, 0.0, eff_shown, 0.0, whole))
    score = round(score_sum, 2) if weights.with_data and coverage >= model.min_coverage else None
    return Evaluation(
        score=score,
        band=model.band(score),
        coverage=coverage,
        model_version=model.version,
        in_grace_period=grace,
        measures=results,
    )
