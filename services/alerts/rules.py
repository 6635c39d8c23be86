"""Alert rules (SPEC §7): the model, its validation and its YAML/JSON form.

Pure: no I/O. A rule says "alert when ``kpi op threshold`` has held for
``for_evaluations`` consecutive evaluations"; it resolves when the value crosses back
past ``resolve_threshold`` (hysteresis) and does not fire again within ``cooldown``
of resolving.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.health import BOOLEAN_KPIS, KPI_NAMES, HealthSnapshot

Op = Literal["<", "<=", ">", ">=", "==", "!="]
Severity = Literal["info", "warning", "critical"]
Threshold = bool | float | str  # bool first: YAML `true` must stay a bool
Value = bool | float | int | str | None

KpiKind = Literal["number", "boolean", "band"]

# What a rule's ``kpi`` may name (SPEC §7): a KPI of SPEC §4 or a field of the score.
SCORE_FIELDS = ("score", "score_delta_7d", "band")
RULE_KPIS: tuple[str, ...] = (*KPI_NAMES, *SCORE_FIELDS)
BANDS = ("green", "yellow", "red")
DEFAULT_COOLDOWN_SECONDS = 24 * 3600.0
MAX_DURATION_SECONDS = 3650 * 86400.0

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``"24h"``, ``"30m"``, ``"90s"``, ``"2d"`` or a number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '24h'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"invalid duration {value!r}: use seconds or e.g. '30m', '24h', '2d'")
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite, non-negative number of seconds")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError("a duration can be at most 3650 days")
    return seconds


def reject_nul(data: Any) -> Any:
    """Refuse NUL characters anywhere in the input: PostgreSQL text cannot store them."""

    def walk(v: Any) -> None:
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("text must not contain NUL (\\u0000) characters")
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(k)
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(data)
    return data


def new_rule_id() -> str:
    return "rule_" + secrets.token_hex(6)


def kpi_kind(kpi: str) -> KpiKind:
    """What the values of a rule's ``kpi`` are, which decides the operators and
    thresholds that make sense: a band compares by equality with a band name, a
    boolean KPI by equality with true/false, everything else is a number."""
    if kpi == "band":
        return "band"
    if kpi in BOOLEAN_KPIS:
        return "boolean"
    return "number"


def _unknown_kpi(kpi: str) -> PydanticCustomError:
    close = difflib.get_close_matches(kpi, RULE_KPIS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PydanticCustomError(
        "unknown_kpi",
        "unknown KPI {kpi}{hint}; a rule's kpi is one of: {allowed}",
        {"kpi": repr(kpi), "hint": hint, "allowed": ", ".join(RULE_KPIS)},
    )


def _kind_ctx(kpi: str) -> dict[str, str]:
    values = {"band": "green, yellow or red", "boolean": "true or false", "number": "a number"}
    return {"kpi": kpi, "values": values[kpi_kind(kpi)]}


def _shown(v: Threshold) -> str:
    """A threshold as a rule file writes it (``true``, ``red``, ``0.5``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f"{v:.15g}" if isinstance(v, float) else v


def describe(exc: ValidationError) -> str:
    """One line naming each invalid field: ``kpi: unknown KPI …; threshold: …``."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'rule'}: {e['msg']}" for e in exc.errors()
    )


class Rule(BaseModel):
    """One alert rule. ``id`` is assigned when omitted; ``cooldown`` is stored in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=new_rule_id)
    name: str = Field(min_length=1, max_length=200)
    kpi: str = Field(min_length=1, max_length=100)
    op: Op
    threshold: Threshold
    resolve_threshold: Threshold | None = None  # None → same as threshold
    for_evaluations: int = Field(default=1, ge=1, le=1000)
    cooldown: float = DEFAULT_COOLDOWN_SECONDS
    lifecycle_stages: list[str] | None = None  # None → every stage
    respect_grace: bool = True
    severity: Severity = "warning"
    enabled: bool = True
    description: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return reject_nul(data)

    @field_validator("kpi")
    @classmethod
    def _known_kpi(cls, v: str) -> str:
        # A rule on a name no snapshot carries would silently never fire (a typo such
        # as licence_utilization): refuse it, naming the ones that exist.
        if v not in RULE_KPIS:
            raise _unknown_kpi(v)
        return v

    @field_validator("op")
    @classmethod
    def _op_fits_kpi(cls, v: str, info: ValidationInfo) -> str:
        kpi = info.data.get("kpi")  # absent when the kpi itself is invalid
        if kpi is not None and kpi_kind(kpi) != "number" and v not in ("==", "!="):
            raise PydanticCustomError(
                "op_for_kpi", "{kpi} is {values}: compare it with == or !=", _kind_ctx(kpi)
            )
        return v

    @field_validator("threshold", "resolve_threshold")
    @classmethod
    def _threshold_fits_kpi(cls, v: Threshold | None, info: ValidationInfo) -> Threshold | None:
        if v is None:
            return v
        if isinstance(v, float) and not math.isfinite(v):
            raise PydanticCustomError("finite_number", "must be a finite number")
        kpi = info.data.get("kpi")
        if kpi is None:
            return v
        kind = kpi_kind(kpi)
        if (
            (kind == "band" and v not in BANDS)
            or (kind == "boolean" and not isinstance(v, bool))
            or (kind == "number" and isinstance(v, bool | str))
        ):
            raise PydanticCustomError(
                "threshold_for_kpi",
                "{kpi} is {values}: the threshold must be {values} too",
                _kind_ctx(kpi),
            )
        return v

    @field_validator("resolve_threshold")
    @classmethod
    def _resolve_on_the_recovered_side(
        cls, v: Threshold | None, info: ValidationInfo
    ) -> Threshold | None:
        # The alert resolves once ``value op resolve_threshold`` no longer holds. On the
        # wrong side of the threshold that happens while the condition still holds
        # (``< 0.5`` resolving at 0.45 when resolve_threshold is 0.4): the alert
        # resolves, then fires again after every cooldown. Refuse it.
        op, threshold = info.data.get("op"), info.data.get("threshold")
        if v is None or op is None or threshold is None or "kpi" not in info.data:
            return v  # absent, or another field is invalid (already reported)
        if op in ("==", "!="):
            wrong, need = v != threshold, "equal the threshold (or be omitted)"
        elif not (isinstance(v, float) and isinstance(threshold, float)):
            return v  # not numbers: the type check above has refused it
        elif op in ("<", "<="):
            wrong, need = v < threshold, "be at or above the threshold"
        else:
            wrong, need = v > threshold, "be at or below the threshold"
        if wrong:
            raise PydanticCustomError(
                "resolve_threshold_side",
                "with {op} {threshold} the resolve_threshold must {need}: {resolve} would "
                "resolve the alert while the condition still holds (and it would fire "
                "again after each cooldown)",
                {"op": op, "threshold": _shown(threshold), "need": need, "resolve": _shown(v)},
            )
        return v

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("id: 1–100 characters of letters, digits, '_', '.', ':' or '-'")
        return v

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, v: Any) -> float:
        return parse_duration(v)

    @field_validator("lifecycle_stages")
    @classmethod
    def _stages(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("lifecycle_stages: omit it (every stage) or list at least one")
        return v

    @property
    def effective_resolve_threshold(self) -> Threshold:
        return self.threshold if self.resolve_threshold is None else self.resolve_threshold

    def applies_to(self, snapshot: HealthSnapshot) -> bool:
        """False when the account's lifecycle stage or grace period excludes it."""
        if self.respect_grace and snapshot.in_grace_period:
            return False
        if self.lifecycle_stages is not None:
            return snapshot.lifecycle_stage in self.lifecycle_stages
        return True


def kpi_value(snapshot: HealthSnapshot, kpi: str) -> Value:
    if kpi == "score":
        return snapshot.score
    if kpi == "score_delta_7d":
        return snapshot.score_delta_7d
    if kpi == "band":
        return snapshot.band
    return snapshot.kpis.get(kpi)


def compare(value: Value, op: str, threshold: Threshold) -> bool | None:
    """``value op threshold``; None when it cannot be decided (null value, a number
    that is not finite — NaN compares false with everything, so ``not (nan < 0)``
    would resolve an open alert — or types that do not compare, e.g. a number
    against a band)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(threshold, str) != isinstance(value, str):
        return None
    if isinstance(threshold, bool) and not isinstance(value, bool):
        return None
    try:
        return bool(_OPS[op](value, threshold))
    except TypeError:
        return None


def is_breached(rule: Rule, value: Value) -> bool | None:
    return compare(value, rule.op, rule.threshold)


def is_recovered(rule: Rule, value: Value) -> bool | None:
    """True when the value has crossed back past the resolve threshold."""
    held = compare(value, rule.op, rule.effective_resolve_threshold)
    return None if held is None else not held


def load_rules(data: Any) -> list[Rule]:
    """Rules from parsed YAML/JSON: a list of rules or ``{"rules": [...]}``.
    Raises ``ValueError`` (pydantic's ValidationError is one) naming the bad rule."""
    items = data.get("rules") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        raise ValueError("expected a list of rules, or a mapping with a 'rules' list")
    rules = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"rule #{i + 1}: expected a mapping")
        try:
            rules.append(Rule.model_validate(dict(item)))
        except ValidationError as exc:
            raise ValueError(
                f"rule #{i + 1} ({item.get('id') or item.get('name')}): {describe(exc)}"
            ) from None
    ids = [r.id for r in rules]
    dupes = {x for x in ids if ids.count(x) > 1}
    if dupes:
        raise ValueError(f"duplicate rule ids: {', '.join(sorted(dupes))}")
    return rules


def by_id(rules: Iterable[Rule]) -> dict[str, Rule]:
    return {r.id: r for r in rules}
