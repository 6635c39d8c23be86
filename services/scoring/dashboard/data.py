"""The dashboard's data: the scoring read model (same queries as the read API) and
the alerts service's ``GET /v1/alerts`` over HTTP (the alerts service owns alerts)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date
from typing import Any

import httpx

from services.scoring import read_model
from services.scoring.clock import Clock

log = logging.getLogger(__name__)


class ReadModelData:
    """:class:`~services.scoring.dashboard.routes.DashboardData` over the read model."""

    def __init__(
        self,
        pool: Any,
        clock: Clock,
        bands: tuple[float, float],
        alerts_url: str | None,
        alerts_key: str | None,
        http: httpx.AsyncClient,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self._bands = bands
        self.alerts_url = alerts_url.rstrip("/") if alerts_url else None
        self.alerts_key = alerts_key
        self.http = http

    def _today(self) -> date:
        return self.clock.now().date()

    def bands(self) -> tuple[float, float]:
        return self._bands

    async def list_accounts(
        self,
        *,
        band: str | None,
        csm: str | None,
        lifecycle_stage: str | None,
        sort: str,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        try:
            page = await read_model.accounts_page(
                self.pool,
                band=band,
                csm=csm,
                lifecycle_stage=lifecycle_stage,
                sort=sort,
                limit=limit,
                cursor=cursor,
            )
        except read_model.BadQuery as exc:
            raise ValueError(str(exc)) from None
        items = page["accounts"]
        for a in items:
            a["last_activity"] = a.get("last_activity_day")
        return items, page["next_cursor"]

    async def choices(self) -> dict[str, list[str]]:
        return await read_model.choices(self.pool)

    async def score_series(
        self, account_ids: list[str], days: int
    ) -> dict[str, list[float | None]]:
        return await read_model.score_series(self.pool, account_ids, self._today(), days)

    async def health(self, account_id: str) -> dict[str, Any] | None:
        try:
            h = await read_model.health(self.pool, account_id)
        except read_model.NotFound:
            return None
        return h | {"account_name": await read_model.account_name(self.pool, account_id)}

    async def history(self, account_id: str, days: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = (
            await read_model.history(self.pool, account_id, self._today(), days)
        )["history"]
        return rows

    async def changes(self, account_id: str, day_from: date, day_to: date) -> dict[str, Any]:
        try:
            out = await read_model.changes(self.pool, account_id, day_from, day_to)
        except (read_model.NotFound, read_model.BadQuery) as exc:
            raise ValueError(str(exc)) from None
        for m in out["measures"]:
            m["delta"] = m["contribution_delta"]
        return out

    async def stakeholders(self, account_id: str, weeks: int) -> list[dict[str, Any]]:
        got = await read_model.stakeholders(self.pool, account_id, self._today(), weeks)
        out = []
        for c in got["contacts"]:
            out.append(
                c
                | {
                    "last_inbound": c["last_inbound_day"],
                    "last_outbound": c["last_outbound_day"],
                    "weeks": [
                        {"week": w, "inbound": i, "outbound": o}
                        for w, i, o in zip(
                            got["weeks"], c["inbound_per_week"], c["outbound_per_week"], strict=True
                        )
                    ],
                }
            )
        return out

    async def alerts(self, account_ids: Sequence[str]) -> dict[str, list[dict[str, Any]]] | None:
        """Alerts per account from the alerts service; None when it cannot be asked."""
        if not self.alerts_url or not self.alerts_key:
            return None
        if not account_ids:
            return {}
        try:
            r = await self.http.get(
                f"{self.alerts_url}/v1/alerts",
                params={"account_id": list(account_ids), "limit": 1000},
                headers={"Authorization": f"Bearer {self.alerts_key}"},
            )
            r.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("alerts service unavailable for the dashboard", extra={"error": str(exc)})
            return None
        out: dict[str, list[dict[str, Any]]] = {a: [] for a in account_ids}
        for a in r.json()["alerts"]:
            d = a.get("deliveries") or {}
            out.setdefault(a["account_id"], []).append(
                {
                    "state": a["status"],
                    "rule_id": a["rule"]["id"],
                    "rule_name": a["rule"]["name"],
                    "severity": a["rule"]["severity"],
                    "fired_at": a["fired_at"],
                    "resolved_at": a["resolved_at"],
                    "value": a["value"],
                    "delivery": ", ".join(f"{n} {k}" for k, n in sorted(d.items()))
                    or "no subscriber",
                }
            )
        return out
