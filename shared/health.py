"""The health snapshot: what scoring publishes to ``healthscore.health`` and alerts
consumes (one message per account whenever its score, band or KPIs change).

Keyed by ``account_id``. ``revision`` increases by one with every snapshot
published for an account, so a consumer can ignore a redelivered or older
message (process only ``revision > last seen``).

Validation refuses what alerts could never record: a NUL character (U+0000) in any
string (the NUL rule of :mod:`shared.events`: PostgreSQL text and JSON cannot hold
it) and a non-finite number (NaN, ±infinity) as score, delta, coverage or KPI value
(a JSON column cannot hold it, and NaN compares false with everything). Such a
message is not a snapshot: the alerts consumer dead-letters it (SPEC §8).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import NO_NUL

Band = Literal["green", "yellow", "red"]
Text = Annotated[str, NO_NUL]
Finite = Annotated[float, Field(allow_inf_nan=False)]  # NaN and ±inf refused
KpiValue = Finite | int | bool | None

# The KPIs of SPEC §4, in order: the keys of a snapshot's ``kpis``. The one list of
# KPI names: scoring computes exactly these (services/scoring/kpis.py), score model
# measures and alert rules may name only these.
KPI_NAMES: tuple[str, ...] = (
    "dau",
    "wau",
    "mau",
    "stickiness",
    "license_utilization",
    "feature_adoption",
    "features_used_30d",
    "time_in_product_minutes",
    "days_since_last_activity",
    "usage_trend",
    "active_stakeholders",
    "touchpoints_30d",
    "days_since_last_inbound",
    "champion_silence_days",
    "champion_left",
    "nps",
    "sentiment",
    "support_tickets_30d",
    "escalations_30d",
)
# The KPIs whose value is a boolean; every other KPI is a number (or null).
BOOLEAN_KPIS: frozenset[str] = frozenset({"champion_left"})


class MeasureResult(BaseModel):
    """One measure of the score model, evaluated (SPEC §5)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kpi: Text
    group: Text | None = None
    value: KpiValue
    points: float | None  # 0–100; None when the KPI is null (measure left out)
    weight: float  # effective weight after renormalisation (0 when left out)
    contribution: float  # points × weight, in score points
    left_on_table: float  # (100 − points) × weight, in score points


class HealthSnapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: Text
    revision: int
    as_of: date
    evaluated_at: AwareDatetime
    trigger: Literal["events", "sweep", "rescore"]
    account_name: Text | None = None
    lifecycle_stage: Text | None = None
    csm: Text | None = None
    score: Finite | None
    band: Band | None
    previous_band: Band | None = None
    score_delta_7d: Finite | None = None
    coverage: Finite
    model_version: Text
    in_grace_period: bool
    kpis: dict[Text, KpiValue]
    measures: list[MeasureResult]
    # Earliest ingest acceptance time among the events that caused this evaluation
    # (None for sweeps): lets alerts measure event → alert latency.
    source_received_at: AwareDatetime | None = None

    def encode(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def decode(cls, raw: bytes) -> HealthSnapshot:
        return cls.model_validate_json(raw)


def is_newer(snapshot: HealthSnapshot, last_revision: int | None) -> bool:
    return last_revision is None or snapshot.revision > last_revision


__all__ = [
    "BOOLEAN_KPIS",
    "KPI_NAMES",
    "Band",
    "HealthSnapshot",
    "KpiValue",
    "MeasureResult",
    "date",
    "datetime",
    "is_newer",
]
