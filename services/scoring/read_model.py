"""The scoring read model: the queries behind the read API (SPEC §6) and the
dashboard. Plain async functions over the asyncpg pool; they return JSON-ready
dicts and raise :class:`NotFound` / :class:`BadQuery` — the HTTP layer (api.py)
and the dashboard translate those."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import orjson

from services.scoring.store import unpack_measures

# Every order of the accounts list is read from an index, never by sorting every
# account: a page costs the same with 10 or 1,000,000 accounts. A score or 7-day
# delta may be null (not scored yet, no score a week ago): those accounts come last
# in either direction, from an index of their own. The indexes (migration
# scoring_0006) are partial, so that no other query can use them — a lookup by
# account_id = ANY(...) could otherwise pick one (account_id is its second column)
# and scan all of it: it did, while every delta was still null (16 ms instead of
# 5 ms for 1,000 accounts):
#   ix_scoring_scores_by_score (score, account_id) WHERE score IS NOT NULL
#   ix_scoring_scores_no_score (account_id) WHERE score IS NULL
#   ix_scoring_scores_by_delta, ix_scoring_scores_no_delta: the same for the delta
#   ix_scoring_accounts_name ((COALESCE(name, account_id)), account_id)
# A descending order reads them backwards; a nullable order reads its null ones
# once the valued ones run out. The expressions below must match the indexes, or
# every page sorts every account again (tests/integration/test_scoring_store.py).


@dataclass(frozen=True, slots=True)
class _Sort:
    column: str  # the indexed sort key (its first column)
    nullable: bool  # its nulls come last, read from the IS NULL index
    descending: bool
    table: str = "s"  # the indexed table's alias: its account_id is the tie-break

    @property
    def tie_break(self) -> str:
        """The index's second column: a cursor's (key, account_id) is then one
        range of the index, not a filter over every entry before it."""
        return f"{self.table}.account_id"

    @property
    def null_key(self) -> float:
        """A null's key in a cursor: past every value in this direction."""
        return -_NULL_KEY if self.descending else _NULL_KEY

    @property
    def key(self) -> str:
        """The sort key a cursor carries."""
        return f"COALESCE({self.column}, {self.null_key})" if self.nullable else self.column


_NULL_KEY = 1e9  # no score (0–100) or 7-day delta (−100–100) comes near it
SORTS: dict[str, _Sort] = {
    "score": _Sort("s.score", nullable=True, descending=False),
    "-score": _Sort("s.score", nullable=True, descending=True),
    "delta": _Sort("s.score_delta_7d", nullable=True, descending=False),
    "-delta": _Sort("s.score_delta_7d", nullable=True, descending=True),
    "name": _Sort("COALESCE(a.name, a.account_id)", nullable=False, descending=False, table="a"),
    "-name": _Sort("COALESCE(a.name, a.account_id)", nullable=False, descending=True, table="a"),
}


class NotFound(LookupError):
    """The account (or the day asked for) does not exist."""


class BadQuery(ValueError):
    """A parameter is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _encode_cursor(sort: str, key: Any, account_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([sort, key, account_id])).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        s, key, account_id = orjson.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise BadQuery("cursor", "not a cursor from this API") from None
    if s != sort:
        raise BadQuery("cursor", "cursor belongs to another sort order")
    want = str if not SORTS[sort].nullable else int | float  # a name, or a number
    if not isinstance(account_id, str) or not isinstance(key, want) or isinstance(key, bool):
        raise BadQuery("cursor", "not a cursor from this API")
    return key, account_id


async def accounts_page(
    pool: Any,
    *,
    band: str | None = None,
    lifecycle_stage: str | None = None,
    csm: str | None = None,
    sort: str = "score",
    limit: int = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Accounts with score, band, 7-day delta and last activity; keyset-paginated."""
    order = SORTS[sort]
    args: list[Any] = [limit + 1]  # $1: the rows still wanted (one more tells a next page)
    where: list[str] = []
    if band:
        args.append(band)
        where.append(f"s.band = ${len(args)}")
    if lifecycle_stage:
        args.append(lifecycle_stage)
        where.append(f"a.lifecycle_stage = ${len(args)}")
    if csm:
        args.append(csm)
        where.append(f"a.csm = ${len(args)}")
    after = _decode_cursor(cursor, sort) if cursor else None
    in_nulls = order.nullable and after is not None and after[0] == order.null_key
    rows = [] if in_nulls else await pool.fetch(*_index_read(order, where, args, after))
    if order.nullable and len(rows) <= limit:
        # the valued accounts ran out on this page: the null ones follow, from the
        # cursor if it is among them (a second query on the boundary page only)
        nulls_after = after if in_nulls else None
        rest = [limit + 1 - len(rows), *args[1:]]
        rows += await pool.fetch(*_index_read(order, where, rest, nulls_after, nulls=True))
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


_COLUMNS = """a.account_id, a.name, a.lifecycle_stage, a.csm, s.score, s.band,
                   s.score_delta_7d, s.as_of, s.kpis->'days_since_last_activity' AS idle"""


def _index_read(
    order: _Sort,
    where: list[str],
    args: list[Any],
    after: tuple[Any, str] | None,
    *,
    nulls: bool = False,
) -> tuple[Any, ...]:
    """The query and arguments reading a page in the order of ``order``'s index
    (backwards when descending) from the cursor position ``after`` on; with
    ``nulls``, the accounts whose key is null, by account id."""
    direction, op = ("DESC", "<") if order.descending else ("ASC", ">")
    cond = list(where)
    args = list(args)
    if order.nullable:
        cond.append(f"{order.column} IS {'' if nulls else 'NOT '}NULL")
    by = [order.tie_break] if nulls else [order.column, order.tie_break]
    if after is not None and nulls:
        # on both tables: a merge join on account_id then starts both at the cursor
        # (with the bound on one side only it read the other from its start)
        args.append(after[1])
        cond += [f"s.account_id {op} ${len(args)}", f"a.account_id {op} ${len(args)}"]
    elif after is not None:
        args += after
        cast = "float8" if order.nullable else "text"
        cond.append(f"({', '.join(by)}) {op} (${len(args) - 1}::{cast}, ${len(args)})")
    sql = f"""SELECT {_COLUMNS}, {order.key} AS sort_key
            FROM scoring_scores s JOIN scoring_accounts a ON a.account_id = s.account_id
            WHERE {" AND ".join(cond) or "TRUE"}
            ORDER BY {", ".join(f"{c} {direction}" for c in by)}
            LIMIT $1"""
    return (sql, *args)


async def _require_account(pool: Any, account_id: str) -> None:
    if not await pool.fetchval("SELECT 1 FROM scoring_accounts WHERE account_id = $1", account_id):
        raise NotFound(f"unknown account {account_id!r}")


async def health(pool: Any, account_id: str) -> dict[str, Any]:
    """The current score with its explanation (SPEC §6 shape)."""
    r = await pool.fetchrow("SELECT * FROM scoring_scores WHERE account_id = $1", account_id)
    if r is None:
        raise NotFound(f"unknown account {account_id!r}")
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


async def account_name(pool: Any, account_id: str) -> str | None:
    name: str | None = await pool.fetchval(
        "SELECT name FROM scoring_accounts WHERE account_id = $1", account_id
    )
    return name


async def history(pool: Any, account_id: str, today: date, days: int) -> dict[str, Any]:
    """One row per day for the last ``days`` days (days never evaluated are absent)."""
    await _require_account(pool, account_id)
    rows = await pool.fetch(
        """SELECT day, score, band, kpis, model_version FROM scoring_days
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


async def changes(pool: Any, account_id: str, from_day: date, to_day: date) -> dict[str, Any]:
    """Why the score moved between two days: per-measure contribution deltas."""
    if from_day > to_day:
        raise BadQuery("from", "from must not be after to")
    await _require_account(pool, account_id)
    rows = await pool.fetch(
        """SELECT day, score, band, model_version, kpis, measures FROM scoring_days
           WHERE account_id = $1 AND day = ANY($2::date[])""",
        account_id,
        [from_day, to_day],
    )
    by_day = {r["day"]: r for r in rows}
    missing = [d.isoformat() for d in (from_day, to_day) if d not in by_day]
    if missing:
        raise NotFound(f"no score history for {account_id!r} on {', '.join(missing)}")
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


async def stakeholders(pool: Any, account_id: str, today: date, weeks: int) -> dict[str, Any]:
    """Per contact: role, last inbound/outbound day, touches per ISO week (Monday
    start) in each direction, oldest week first — the relationship heatmap."""
    await _require_account(pool, account_id)
    this_monday = today - timedelta(days=today.weekday())
    week_starts = [this_monday - timedelta(weeks=i) for i in range(weeks - 1, -1, -1)]
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


async def score_series(
    pool: Any, account_ids: Sequence[str], today: date, days: int
) -> dict[str, list[float | None]]:
    """Daily scores of several accounts over the last ``days`` days, oldest first
    (None where a day has no score): the dashboard's sparklines, one query."""
    if not account_ids:
        return {}
    rows = await pool.fetch(
        """SELECT account_id, day, score FROM scoring_days
           WHERE account_id = ANY($1::text[]) AND day > $2::date - $3::int AND day <= $2::date""",
        list(account_ids),
        today,
        days,
    )
    first = today - timedelta(days=days - 1)
    out: dict[str, list[float | None]] = {a: [None] * days for a in account_ids}
    for r in rows:
        out[r["account_id"]][(r["day"] - first).days] = r["score"]
    return out


# The distinct values of an indexed column of scoring_accounts, one index probe each
# (a "loose index scan"): the filter menus cost the same with 100 or 1,000,000
# accounts, where SELECT DISTINCT read every account (40 ms a page with 63k).
_DISTINCT = """WITH RECURSIVE v AS (
    (SELECT {col} AS value FROM scoring_accounts WHERE {col} IS NOT NULL ORDER BY {col} LIMIT 1)
    UNION ALL
    SELECT (SELECT {col} FROM scoring_accounts WHERE {col} > v.value ORDER BY {col} LIMIT 1)
    FROM v WHERE v.value IS NOT NULL)
SELECT value FROM v WHERE value IS NOT NULL LIMIT {limit}"""


async def choices(pool: Any) -> dict[str, list[str]]:
    """The CSMs (the first 500) and lifecycle stages present, for filter menus."""
    csms = await pool.fetch(_DISTINCT.format(col="csm", limit=500))
    stages = await pool.fetch(_DISTINCT.format(col="lifecycle_stage", limit=100))
    return {"csms": [r["value"] for r in csms], "stages": [r["value"] for r in stages]}


def _iso(d: date | None) -> str | None:
    return None if d is None else d.isoformat()
