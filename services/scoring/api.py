"""The read API of SPEC §6 (``read`` scope): accounts list, health, history,
changes between two days, stakeholders heatmap data. Reads only; one query (or
two) per request on the asyncpg pool in ``app.state.pool``."""

from __future__ import annotations

import base64
import binascii
from datetime import date, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from services.scoring.clock import Clock
from services.scoring.store import unpack_measures
from shared.auth import Scope, require_scope

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope(Scope.READ))])

AccountId = Annotated[str, Path(min_length=1, max_length=128)]
SortKey = Literal["score", "-score", "name", "-name", "delta", "-delta"]

# sort → (key expression, direction); nulls sort last in either direction
_SORTS: dict[str, tuple[str, str]] = {
    "score": ("COALESCE(s.score, 1e9)", "ASC"),
    "-score": ("COALESCE(s.score, -1e9)", "DESC"),
    "delta": ("COALESCE(s.score_delta_7d, 1e9)", "ASC"),
    "-delta": ("COALESCE(s.score_delta_7d, -1e9)", "DESC"),
    "name": ("COALESCE(a.name, a.account_id)", "ASC"),
    "-name": ("COALESCE(a.name, a.account_id)", "DESC"),
}


def _pool(request: Request) -> Any:
    return request.app.state.pool


def _today(request: Request) -> date:
    clock: Clock = request.app.state.clock
    return clock.now().date()


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in the same ``{"errors": [{field, message}]}`` shape as FastAPI's own."""
    return RequestValidationError(
        [{"loc": ("query", field), "msg": message, "type": "value_error"}]
    )


def _encode_cursor(sort: str, key: Any, account_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([sort, key, account_id])).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        s, key, account_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise _invalid("cursor", "not a cursor from this API") from None
    if s != sort or not isinstance(account_id, str):
        raise _invalid("cursor", "cursor belongs to another sort order")
    if sort in ("name", "-name"):
        if not isinstance(key, str):
            raise _invalid("cursor", "bad cursor")
    elif not isinstance(key, int | float):
        raise _invalid("cursor", "bad cursor")
    return key, account_id


@router.get("/accounts")
async def list_accounts(
    request: Request,
    band: Literal["green", "yellow", "red"] | None = None,
    lifecycle_stage: Literal["trial", "poc", "onboarding", "active", "churned"] | None = None,
    csm: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    sort: SortKey = "score",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """Accounts with score, band, 7-day delta and last activity; keyset-paginated."""
    expr, direction = _SORTS[sort]
    where = ["TRUE"]
    args: list[Any] = []
    if band:
        args.append(band)
        where.append(f"s.band = ${len(args)}")
    if lifecycle_stage:
        args.append(lifecycle_stage)
        where.append(f"a.lifecycle_stage = ${len(args)}")
    if csm:
        args.append(csm)
        where.append(f"a.csm = ${len(args)}")
    if cursor:
        key, after = _decode_cursor(cursor, sort)
        cast = "text" if sort in ("name", "-name") else "float8"
        args += [key, after]
        op = ">" if direction == "ASC" else "<"
        where.append(f"({expr}, a.account_id) {op} (${len(args) - 1}::{cast}, ${len(args)})")
    args.append(limit + 1)
    rows = await _pool(request).fetch(
        f"""SELECT a.account_id, a.name, a.lifecycle_stage, a.csm, s.score, s.band,
                   s.score_delta_7d, s.as_of, s.kpis->'days_since_last_activity' AS idle,
                   {expr} AS sort_key
            FROM scoring_scores s JOIN scoring_accounts a ON a.account_id = s.account_id
            WHERE {" AND ".join(where)}
            ORDER BY {expr} {direction}, a.account_id {direction}
            LIMIT ${len(args)}""",
        *args,
    )
    page = rows[:limit]
    items = []
    for r in page:
        idle = r["idle"]
        items.append(
            {
                "account_id": r["account_id"],
                "name": r["name"],
                "lifecycle_stage": r["lifecycle_stage"],
                "csm": r["csm"],
                "score": r["score"],
                "band": r["band"],
                "score_delta_7d": r["score_delta_7d"],
                "as_of": r["as_of"].isoformat(),
                "days_since_last_activity": idle,
                "last_activity_day": (
                    None if idle is None else (r["as_of"] - timedelta(days=int(idle))).isoformat()
                ),
            }
        )
    next_cursor = (
        _encode_cursor(sort, page[-1]["sort_key"], page[-1]["account_id"])
        if len(rows) > limit
        else None
    )
    return {"accounts": items, "next_cursor": next_cursor}


async def _require_account(request: Request, account_id: str) -> None:
    found = await _pool(request).fetchval(
        "SELECT 1 FROM scoring_accounts WHERE account_id = $1", account_id
    )
    if not found:
        raise HTTPException(404, f"unknown account {account_id!r}")


@router.get("/accounts/{account_id}/health")
async def account_health(request: Request, account_id: AccountId) -> dict[str, Any]:
    """The current score with its explanation (SPEC §6 shape)."""
    r = await _pool(request).fetchrow(
        "SELECT * FROM scoring_scores WHERE account_id = $1", account_id
    )
    if r is None:
        raise HTTPException(404, f"unknown account {account_id!r}")
    return {
        "account_id": r["account_id"],
        "as_of": r["as_of"].isoformat(),
        "score": r["score"],
        "band": r["band"],
        "score_delta_7d": r["score_delta_7d"],
        "coverage": r["coverage"],
        "model_version": r["model_version"],
        "in_grace_period": r["in_grace_period"],
        "kpis": r["kpis"],
        "measures": [
            {k: m[k] for k in ("kpi", "value", "points", "weight", "contribution", "left_on_table")}
            for m in unpack_measures(r["measures"], r["kpis"])
        ],
    }


@router.get("/accounts/{account_id}/history")
async def account_history(
    request: Request, account_id: AccountId, days: Annotated[int, Query(ge=1, le=400)] = 90
) -> dict[str, Any]:
    """One row per day for the last ``days`` days (days never evaluated are absent)."""
    await _require_account(request, account_id)
    today = _today(request)
    rows = await _pool(request).fetch(
        """SELECT day, score, band, kpis, model_version FROM scoring_history
           WHERE account_id = $1 AND day > $2::date - $3::int AND day <= $2::date
           ORDER BY day""",
        account_id,
        today,
        days,
    )
    return {
        "account_id": account_id,
        "history": [
            {
                "day": r["day"].isoformat(),
                "score": r["score"],
                "band": r["band"],
                "model_version": r["model_version"],
                "kpis": r["kpis"],
            }
            for r in rows
        ],
    }


@router.get("/accounts/{account_id}/changes")
async def account_changes(
    request: Request,
    account_id: AccountId,
    from_day: Annotated[date, Query(alias="from")],
    to_day: Annotated[date, Query(alias="to")],
) -> dict[str, Any]:
    """Why the score moved between two days: per-measure contribution deltas."""
    if from_day > to_day:
        raise _invalid("from", "from must not be after to")
    await _require_account(request, account_id)
    rows = await _pool(request).fetch(
        """SELECT day, score, band, model_version, kpis, measures FROM scoring_history
           WHERE account_id = $1 AND day = ANY($2::date[])""",
        account_id,
        [from_day, to_day],
    )
    by_day = {r["day"]: r for r in rows}
    missing = [d.isoformat() for d in (from_day, to_day) if d not in by_day]
    if missing:
        raise HTTPException(404, f"no score history for {account_id!r} on {', '.join(missing)}")
    a, b = by_day[from_day], by_day[to_day]
    ma = {m["kpi"]: m for m in unpack_measures(a["measures"], a["kpis"])}
    mb = {m["kpi"]: m for m in unpack_measures(b["measures"], b["kpis"])}
    measures = []
    for kpi in list(ma) + [k for k in mb if k not in ma]:
        x, y = ma.get(kpi, {}), mb.get(kpi, {})
        ca, cb = x.get("contribution", 0.0), y.get("contribution", 0.0)
        measures.append(
            {
                "kpi": kpi,
                "value_from": x.get("value"),
                "value_to": y.get("value"),
                "points_from": x.get("points"),
                "points_to": y.get("points"),
                "contribution_from": ca,
                "contribution_to": cb,
                "contribution_delta": round(cb - ca, 4),
            }
        )
    measures.sort(key=lambda m: -abs(m["contribution_delta"]))
    score_change = (
        None if a["score"] is None or b["score"] is None else round(b["score"] - a["score"], 2)
    )
    return {
        "account_id": account_id,
        "from": from_day.isoformat(),
        "to": to_day.isoformat(),
        "score_from": a["score"],
        "score_to": b["score"],
        "score_change": score_change,
        "band_from": a["band"],
        "band_to": b["band"],
        "model_changed": a["model_version"] != b["model_version"],
        "model_version_from": a["model_version"],
        "model_version_to": b["model_version"],
        "measures": measures,
    }


@router.get("/accounts/{account_id}/stakeholders")
async def account_stakeholders(
    request: Request, account_id: AccountId, weeks: Annotated[int, Query(ge=1, le=52)] = 12
) -> dict[str, Any]:
    """Per contact: role, last inbound/outbound day, touches per ISO week (Monday
    start) in each direction, oldest week first — the relationship heatmap."""
    await _require_account(request, account_id)
    today = _today(request)
    this_monday = today - timedelta(days=today.weekday())
    week_starts = [this_monday - timedelta(weeks=i) for i in range(weeks - 1, -1, -1)]
    pool = _pool(request)
    contacts = await pool.fetch(
        """SELECT c.contact_id, c.name, c.email, c.role, c.left_company,
             (SELECT max(day) FROM scoring_contact_days d WHERE d.account_id = c.account_id
                AND d.contact_id = c.contact_id AND d.inbound > 0) AS last_inbound_day,
             (SELECT max(day) FROM scoring_contact_days d WHERE d.account_id = c.account_id
                AND d.contact_id = c.contact_id AND d.outbound > 0) AS last_outbound_day
           FROM scoring_contacts c WHERE c.account_id = $1 ORDER BY c.contact_id""",
        account_id,
    )
    touches = await pool.fetch(
        """SELECT contact_id, date_trunc('week', day)::date AS week,
                  sum(inbound) AS inbound, sum(outbound) AS outbound
           FROM scoring_contact_days
           WHERE account_id = $1 AND day >= $2::date AND day <= $3::date
           GROUP BY contact_id, week""",
        account_id,
        week_starts[0],
        today,
    )
    index = {w: i for i, w in enumerate(week_starts)}
    grid: dict[str, tuple[list[int], list[int]]] = {}
    for t in touches:
        inbound, outbound = grid.setdefault(t["contact_id"], ([0] * weeks, [0] * weeks))
        i = index.get(t["week"])
        if i is not None:
            inbound[i] += int(t["inbound"])
            outbound[i] += int(t["outbound"])
    out = []
    for c in contacts:
        inbound, outbound = grid.get(c["contact_id"], ([0] * weeks, [0] * weeks))
        out.append(
            {
                "contact_id": c["contact_id"],
                "name": c["name"],
                "email": c["email"],
                "role": c["role"],
                "left_company": c["left_company"],
                "last_inbound_day": _iso(c["last_inbound_day"]),
                "last_outbound_day": _iso(c["last_outbound_day"]),
                "inbound_per_week": inbound,
                "outbound_per_week": outbound,
            }
        )
    return {
        "account_id": account_id,
        "weeks": [w.isoformat() for w in week_starts],
        "contacts": out,
    }


def _iso(d: date | None) -> str | None:
    return None if d is None else d.isoformat()
