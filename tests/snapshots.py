"""Health snapshots as scoring publishes them, for the alerts tests and the alerts
benchmark: ``snapshot("acme", 2, nps=-40, band="red")``."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from shared.health import HealthSnapshot


def snapshot(account_id: str, revision: int = 1, **kpis: Any) -> HealthSnapshot:
    """Revision ``revision`` of ``account_id``'s snapshot with these KPIs; ``score``,
    ``band``, ``previous_band`` and ``in_grace_period`` among them set those fields
    instead. Later revisions are evaluated later (one second apart)."""
    return HealthSnapshot(
        account_id=account_id,
        account_name=f"Account {account_id}",
        revision=revision,
        as_of=date.today(),
        evaluated_at=datetime.now(UTC) + timedelta(seconds=revision),
        trigger="events",
        score=kpis.pop("score", 80.0),
        band=kpis.pop("band", "green"),
        previous_band=kpis.pop("previous_band", None),
        coverage=1.0,
        model_version="test",
        in_grace_period=kpis.pop("in_grace_period", False),
        lifecycle_stage="customer",
        kpis=kpis,
        measures=[],
    )
