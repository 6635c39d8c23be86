"""SQL adapter of the scoring service: window writes, set-based window reads,
score and history writes. Every function runs inside the caller's transaction
(the batch, the sweep or the request) and never commits.

Hot-path statements are multi-row ``INSERT … SELECT FROM unnest($arrays) ON
CONFLICT DO UPDATE``: one round trip per table per batch, whatever its size.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs published
import orjson

from services.scoring.buckets import (
    ACCOUNT_ATTRS,
    CONTACT_ATTRS,
    DAY_COUNTERS,
    DAY_FLOATS,
    BatchDeltas,
)
from services.scoring.kpis import KpiValue, WindowAggregates
from shared.events import DEDUP_WINDOW

Pg = Any  # an asyncpg.Connection (asyncpg ships no type stubs)
Pool = Any  # an asyncpg.Pool


def dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _init_connection(conn: Pg) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class _Connection(asyncpg.Connection):  # type: ignore[misc]  # untyped base
    """Skips the reset query asyncpg runs on every pool release (advisory unlock,
    CLOSE ALL, UNLISTEN, RESET ALL): this service uses none of those, and the
    round trip cost as much as a window upsert per batch."""

    def get_reset_query(self) -> str:
        return ""


async def create_pool(database_url: str, size: int = 4) -> Pool:
    """An asyncpg pool whose connections encode/decode jsonb with orjson."""
    return await asyncpg.create_pool(
        dsn(database_url),
        min_size=1,
        max_size=size,
        init=_init_connection,
        connection_class=_Connection,
    )


def _plain(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


# Array parameters of the hot statements are sent as array literals (one text
# parameter, cast in SQL: ``$1::text::text[]``). asyncpg's binary array encoding
# costs ~330 ns of Python per text element and ~220 per int (it checks every
# element against ``collections.abc``); a literal costs ~30 ns of Python and
# ~70 ns of Postgres to parse, measured on this machine — a batch of 5,000 events
# sends ~40,000 such elements, and the consumer's Python is its bottleneck.


def text_array(values: Sequence[str]) -> str:
    """A ``text[]`` literal of ``values``: every element double-quoted, so any text
    (commas, braces, spaces, "NULL") stays itself; quotes and backslashes inside an
    element are escaped (rare: checked once over the whole batch)."""
    if not values:
        return "{}"
    joined = '","'.join(values)
    if joined.count('"') != 2 * (len(values) - 1) or "\\" in joined:
        joined = '","'.join(v.replace("\\", "\\\\").replace('"', '\\"') for v in values)
    return '{"' + joined + '"}'


def _timestamps(values: Sequence[datetime]) -> str:
    """A ``timestamptz[]`` literal of ``values`` (ISO 8601, with their offsets)."""
    return text_array([v.isoformat() for v in values])


_SMALL = [str(i) for i in range(4096)]  # most counters of a batch are small


def int_array(values: Sequence[int]) -> str:
    """An ``int[]``/``bigint[]`` literal of ``values``."""
    small = _SMALL
    return "{" + ",".join([small[v] if 0 <= v < 4096 else str(v) for v in values]) + "}"


# ---------------------------------------------------------------- dedup


async def claim_new_events(pg: Pg, ids: Sequence[str], received: datetime) -> set[str]:
    """Record event ids; returns those not seen before (7-day dedup, SPEC §3.1).
    ``received``: the latest ``received_at`` of the batch, stored for every id (an
    id is then remembered at least 7 days after its own receipt, and the batch
    sends one timestamp instead of one per event).

    A plain insert of the ids not stored yet (an anti-join: measured ~5 % more
    scoring throughput than ``ON CONFLICT DO NOTHING``, whose speculative
    insertion doubled the cost of each row). An id another transaction has
    inserted but not committed makes this insert wait for it and, if it commits,
    fail with a unique violation: the caller's transaction is retried
    (``consumer.in_transaction``) and then sees the id as stored."""
    if not ids:
        return set()
    # One row back, not one per id: the inserted ids only when some id was not
    # (a resend; decoding 5,000 returned rows was a twentieth of a batch's Python).
    row = await pg.fetchrow(
        """WITH ins AS (
             INSERT INTO scoring_processed_events (event_id, received_at)
             SELECT x.id, $2::timestamptz FROM unnest($1::text::text[]) AS x(id)
             WHERE NOT EXISTS (SELECT 1 FROM scoring_processed_events e WHERE e.event_id = x.id)
             RETURNING event_id)
           SELECT count(*) AS n, CASE WHEN count(*) < $3 THEN array_agg(event_id) END AS new
           FROM ins""",
        text_array(ids),
        received,
        len(ids),
    )
    return set(ids) if row["n"] == len(ids) else set(row["new"] or ())


RETENTION_DAYS = 400  # events older than this are refused by ingest (SPEC §3.1)


async def prune_processed(pg: Pg, now: datetime) -> int:
    """Forget event ids older than the 7-day dedup window and window buckets and
    history older than 400 days (no window or rule looks further back)."""
    status: str = await pg.execute(
        "DELETE FROM scoring_processed_events WHERE received_at < $1", now - DEDUP_WINDOW
    )
    horizon = now.date() - timedelta(days=RETENTION_DAYS)
    for table in (
        "scoring_account_days",
        "scoring_user_days",  # written by the previous release only (scoring_0007)
        "scoring_feature_days",
        "scoring_contact_days",
        "scoring_history",
    ):
        await pg.execute(f"DELETE FROM {table} WHERE day < $1", horizon)
    await pg.execute("DELETE FROM scoring_account_users WHERE last_day < $1", horizon)
    return int(status.rsplit(" ", 1)[-1])


# ---------------------------------------------------------------- window writes


USER_DAY_BITS = 448  # days a user's bitmap covers: > 400 retained + 34 a window reaches back
# Merging a batch's bitmap of a user (EXCLUDED) into the stored one (t): both are
# aligned on the later last day (shifting right = back in time), then or-ed.
_MERGE_USER_BITS = """
    days = CASE WHEN EXCLUDED.last_day >= t.last_day
                THEN (t.days >> (EXCLUDED.last_day - t.last_day)) | EXCLUDED.days
                ELSE t.days | (EXCLUDED.days >> (t.last_day - EXCLUDED.last_day)) END,
    last_day = GREATEST(t.last_day, EXCLUDED.last_day)"""


def user_bits(
    user_days: Iterable[tuple[str, date, str]],
) -> tuple[list[str], list[str], list[date], list[str]]:
    """A batch's (account, day, user) activity as one row per (account, user), in
    key order: its last day and its days as a bit string back from it (character
    0 = the last day, 1 = the day before…; PostgreSQL pads it to
    :data:`USER_DAY_BITS`). Days further back than the bitmap reaches are dropped:
    they are older than any window or rescore reads."""
    days_of: dict[tuple[str, str], list[date]] = {}
    for account, day, user in user_days:
        days_of.setdefault((account, user), []).append(day)
    accounts: list[str] = []
    users: list[str] = []
    last_days: list[date] = []
    maps: list[str] = []
    for (account, user), days in sorted(days_of.items()):
        last = max(days)
        mask = 0
        for day in days:
            back = (last - day).days
            if back < USER_DAY_BITS:
                mask |= 1 << back
        accounts.append(account)
        users.append(user)
        last_days.append(last)
        maps.append(format(mask, "b")[::-1])
    return accounts, users, last_days, maps


Statement = tuple[str, list[Any]]  # SQL and its arguments


def _statement(sql: str, *args: Any) -> Statement:
    return sql, list(args)


async def apply_deltas(pg: Pg, statements: Iterable[Statement]) -> None:
    """Add one batch's deltas to the windows: the upserts :func:`window_statements`
    encoded from them, in order."""
    for sql, args in statements:
        await pg.execute(sql, *args)


def window_statements(d: BatchDeltas) -> Iterator[Statement]:
    """The statements that add ``d`` to the windows, one upsert per table, in the
    order they must run (pure: the consumer encodes a batch's statements while the
    batch before it is still being applied)."""
    # Accounts first, in key order: this row lock serialises concurrent evaluations
    # of one account (a consumer and a sweep) and the fixed order avoids deadlocks.
    accounts = sorted(d.last_event_day)
    # Attributes only when some event of the batch sets one (account_updated is
    # rare): otherwise 16 columns of nulls to encode and compare per account.
    attrs = ACCOUNT_ATTRS if d.accounts else ()
    cols: dict[str, list[Any]] = {a: [] for a in attrs}
    as_of: dict[str, list[datetime | None]] = {a: [] for a in attrs}
    for acc in accounts if attrs else ():
        upd = d.accounts.get(acc)
        for a in attrs:
            held = upd.values.get(a) if upd else None
            cols[a].append(_plain(held[1]) if held else None)
            as_of[a].append(held[0] if held else None)
    types = {
        "name": "text",
        "seats_purchased": "int",
        "lifecycle_stage": "text",
        "onboarding_completed_at": "timestamptz",
        "plan": "text",
        "arr": "float8",
        "renewal_date": "date",
        "csm": "text",
    }
    args: list[Any] = [
        text_array(accounts),
        [d.first_event_day[a] for a in accounts],
        [d.last_event_day[a] for a in accounts],
    ]
    unnest = ["$1::text::text[]", "$2::date[]", "$3::date[]"]
    names = ["account_id", "first_event_day", "last_event_day"]
    sets = [
        "first_event_day = LEAST(t.first_event_day, EXCLUDED.first_event_day)",
        "last_event_day = GREATEST(t.last_event_day, EXCLUDED.last_event_day)",
    ]
    for a in attrs:
        args += [cols[a], as_of[a]]
        unnest += [f"${len(args) - 1}::{types[a]}[]", f"${len(args)}::timestamptz[]"]
        names += [a, f"{a}_as_of"]
        wins = (
            f"(EXCLUDED.{a}_as_of IS NOT NULL AND "
            f"(t.{a}_as_of IS NULL OR EXCLUDED.{a}_as_of >= t.{a}_as_of))"
        )
        sets += [
            f"{a} = CASE WHEN {wins} THEN EXCLUDED.{a} ELSE t.{a} END",
            f"{a}_as_of = CASE WHEN {wins} THEN EXCLUDED.{a}_as_of ELSE t.{a}_as_of END",
        ]
    # applied_seq: one more batch applied to the account (under its row lock), so
    # the evaluator can tell whether a score reflects everything applied.
    names.append("applied_seq")
    sets.append("applied_seq = t.applied_seq + 1")
    yield _statement(
        f"""INSERT INTO scoring_accounts AS t ({", ".join(names)})
            SELECT *, 1 FROM unnest({", ".join(unnest)})
            ON CONFLICT (account_id) DO UPDATE SET {", ".join(sets)}""",
        *args,
    )

    # One statement for both: the users' activity bitmaps (user_bits) and the day
    # rows. Every user event also adds to its (account, day) row, so there are day
    # rows whenever there are users.
    keys = sorted(d.days)
    if keys:
        columns = list(zip(*(d.days[k] for k in keys), strict=True))
        # Only the counters some row of the batch adds to (most event types touch
        # one or two): a column of zeros would cost its encoding and its update.
        used = [(c, col) for c, col in zip(DAY_COUNTERS, columns, strict=True) if any(col)]
        # floats keep the binary encoding, counts go as literals (see text_array)
        sent = [
            (c, "float8[]", col) if c in DAY_FLOATS else (c, "text::int[]", int_array(col))
            for c, col in used
        ]
        day_args: list[Any] = []
        users_sql = ""
        if d.user_days:
            accounts_, users_, last_days, maps = user_bits(d.user_days)
            day_args = [text_array(accounts_), text_array(users_), last_days, text_array(maps)]
            users_sql = f"""WITH users AS (
                  INSERT INTO scoring_account_users AS t (account_id, user_id, last_day, days)
                  SELECT a, u, l, b::varbit::bit({USER_DAY_BITS})
                  FROM unnest($1::text::text[], $2::text::text[], $3::date[], $4::text::text[])
                    AS x(a, u, l, b)
                  ON CONFLICT (account_id, user_id) DO UPDATE SET {_MERGE_USER_BITS}
                  WHERE EXCLUDED.last_day > t.last_day
                     OR (t.days | (EXCLUDED.days >> (t.last_day - EXCLUDED.last_day)))
                        <> t.days)
                """
        first = len(day_args) + 1
        day_args += [text_array([k[0] for k in keys]), [k[1] for k in keys]]
        day_args += [value for _, _, value in sent]
        unnest_cols = "".join(f", ${first + 2 + i}::{cast}" for i, (_, cast, _) in enumerate(sent))
        counters = "".join(f", {c}" for c, _ in used)
        adds = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c, _ in used)
        on_conflict = f"DO UPDATE SET {adds}" if adds else "DO NOTHING"
        yield _statement(
            f"""{users_sql}INSERT INTO scoring_account_days AS t (account_id, day{counters})
                SELECT * FROM unnest(${first}::text::text[], ${first + 1}::date[]{unnest_cols})
                ON CONFLICT (account_id, day) {on_conflict}""",
            *day_args,
        )

    if d.feature_days:
        fk = sorted(d.feature_days)
        yield _statement(
            """INSERT INTO scoring_feature_days AS t (account_id, day, feature, uses)
               SELECT * FROM unnest($1::text::text[], $2::date[], $3::text::text[],
                                    $4::text::bigint[])
               ON CONFLICT (account_id, day, feature) DO UPDATE
               SET uses = t.uses + EXCLUDED.uses""",
            text_array([k[0] for k in fk]),
            [k[1] for k in fk],
            text_array([k[2] for k in fk]),
            int_array([d.feature_days[k] for k in fk]),
        )

    contacts = sorted(d.contacts_seen)
    if contacts and not d.contacts:  # seen through communications only: just exist
        yield _statement(
            """INSERT INTO scoring_contacts (account_id, contact_id)
               SELECT * FROM unnest($1::text::text[], $2::text::text[]) ON CONFLICT DO NOTHING""",
            text_array([c[0] for c in contacts]),
            text_array([c[1] for c in contacts]),
        )
    elif contacts:
        c_args: list[Any] = [[c[0] for c in contacts], [c[1] for c in contacts]]
        c_unnest = ["$1::text[]", "$2::text[]"]
        c_names = ["account_id", "contact_id"]
        c_sets: list[str] = []
        ctypes = {"role": "text", "name": "text", "email": "text", "left_company": "bool"}
        for a in CONTACT_ATTRS:
            c_held = [(d.contacts[c].values.get(a) if c in d.contacts else None) for c in contacts]
            c_args += [
                [_plain(h[1]) if h else None for h in c_held],
                [h[0] if h else None for h in c_held],
            ]
            c_unnest += [f"${len(c_args) - 1}::{ctypes[a]}[]", f"${len(c_args)}::timestamptz[]"]
            c_names += [a, f"{a}_as_of"]
            wins = (
                f"(EXCLUDED.{a}_as_of IS NOT NULL AND "
                f"(t.{a}_as_of IS NULL OR EXCLUDED.{a}_as_of >= t.{a}_as_of))"
            )
            c_sets += [
                f"{a} = CASE WHEN {wins} THEN EXCLUDED.{a} ELSE t.{a} END",
                f"{a}_as_of = CASE WHEN {wins} THEN EXCLUDED.{a}_as_of ELSE t.{a}_as_of END",
            ]
        offered = [d.contacts.get(c) for c in contacts]
        c_args += [
            [bool(u.was_champion) if u else False for u in offered],
            [u.role_break if u else None for u in offered],
            [_timestamps(u.champion_run) if u and u.champion_run else None for u in offered],
        ]
        c_unnest += [
            f"${len(c_args) - 2}::bool[]",
            f"${len(c_args) - 1}::timestamptz[]",
            f"${len(c_args)}::text[]",
        ]
        c_names += ["was_champion", "role_break", "champion_run"]
        role_wins = (
            "(EXCLUDED.role_as_of IS NOT NULL AND "
            "(t.role_as_of IS NULL OR EXCLUDED.role_as_of >= t.role_as_of))"
        )
        c_sets += [
            "was_champion = t.was_champion OR EXCLUDED.was_champion",
            f"""became_champion_day = CASE WHEN {role_wins} THEN EXCLUDED.became_champion_day
                  ELSE t.became_champion_day END""",
        ]
        # The day a contact became champion is the day of the role offer that made it
        # one after a role that was not (a champion re-sent by a CRM sync keeps its
        # day). Applied as if event by event, whatever the batches: of the batch's
        # winning role offers, those at or after the stored role's timestamp win over
        # it (held: the stored row, locked). So the day is the stored one when the
        # stored role is champion and no offer that broke the run wins over it, else
        # the day of the run's first offer that wins. COALESCE: a contact first seen
        # through a communication has no left_company yet.
        stored = ", ".join(c_names[:-2])
        values = ", ".join(
            "COALESCE(x.left_company, false)" if n == "left_company" else f"x.{n}"
            for n in c_names[:-2]
        )
        yield _statement(
            f"""WITH x AS (SELECT * FROM unnest({", ".join(c_unnest)}) AS x({", ".join(c_names)})),
                held AS (
                  SELECT t.account_id, t.contact_id, t.role, t.role_as_of, t.became_champion_day
                  FROM scoring_contacts t JOIN x
                    ON t.account_id = x.account_id AND t.contact_id = x.contact_id
                  WHERE x.role_as_of IS NOT NULL
                  ORDER BY t.account_id, t.contact_id FOR UPDATE OF t)
                INSERT INTO scoring_contacts AS t ({stored}, became_champion_day)
                SELECT {values},
                  CASE WHEN x.role IS DISTINCT FROM 'champion' THEN NULL
                       WHEN h.role = 'champion'
                         AND (x.role_break IS NULL OR x.role_break < h.role_as_of)
                         THEN h.became_champion_day
                       ELSE (SELECT (min(m) AT TIME ZONE 'UTC')::date
                             FROM unnest(x.champion_run::timestamptz[]) AS m
                             WHERE h.role_as_of IS NULL OR m >= h.role_as_of) END
                FROM x LEFT JOIN held h
                  ON h.account_id = x.account_id AND h.contact_id = x.contact_id
                ON CONFLICT (account_id, contact_id) DO UPDATE SET {", ".join(c_sets)}""",
            *c_args,
        )

    if d.contact_days:
        ck = sorted(d.contact_days)
        yield _statement(
            """INSERT INTO scoring_contact_days AS t
                 (account_id, day, contact_id, inbound, outbound)
               SELECT * FROM unnest($1::text::text[], $2::date[], $3::text::text[],
                                    $4::text::int[], $5::text::int[])
               ON CONFLICT (account_id, day, contact_id) DO UPDATE SET
                 inbound = t.inbound + EXCLUDED.inbound,
                 outbound = t.outbound + EXCLUDED.outbound""",
            text_array([k[0] for k in ck]),
            [k[1] for k in ck],
            text_array([k[2] for k in ck]),
            int_array([d.contact_days[k][0] for k in ck]),
            int_array([d.contact_days[k][1] for k in ck]),
        )


# ---------------------------------------------------------------- window reads

# The round's accounts as the window tables' filters take them: through a subquery,
# a value the planner cannot see, instead of a constant whose every element it would
# estimate against the statistics of each filter (see _READ_SETTINGS).
_ROUND = "(SELECT $1::text[])::text[]"

_AGGREGATES_SQL = f"""
WITH a AS (SELECT DISTINCT unnest($1::text[]) AS account_id),
-- The per-account tables are read by key (= ANY), never scanned: they take an
-- update per batch or evaluation, and a scan would pay for every dead row
-- autovacuum has not reclaimed yet (it grew latency under sustained load).
-- MATERIALIZED: read once for the whole array; inlined, the planner probed the
-- index once per account with the whole array again (quadratic in the batch).
acc AS MATERIALIZED (SELECT * FROM scoring_accounts WHERE account_id = ANY({_ROUND})),
sc AS MATERIALIZED (SELECT account_id, revision, as_of, score, band, kpis, snapshot_digest
  FROM scoring_scores
  WHERE account_id = ANY({_ROUND})),
pub AS MATERIALIZED (SELECT account_id, revision FROM scoring_published
  WHERE account_id = ANY({_ROUND})),
u AS (  -- one row per user active in the window, its days as a bitmap (apply_deltas):
  -- bit p is the day last_day - p, so as_of is bit off = last_day - as_of; the
  -- window's days from the later of as_of and last_day back (lo: where they start)
  SELECT account_id,
    count(*) FILTER (WHERE today) AS dau,
    count(*) FILTER (WHERE bit_count(w7) > 0) AS wau,
    count(*) FILTER (WHERE bit_count(w30) > 0) AS mau,
    count(*) FILTER (WHERE bit_count(d28_34) > 0) AS users_d34_d28,
    sum(bit_count(w30)) AS user_days_30d
  FROM (
    SELECT account_id,
      CASE WHEN off >= 0 AND off < bit_length(days) THEN get_bit(days, off) = 1
        ELSE false END AS today,
      substring(days FROM lo + 1 FOR greatest(0, off + 7 - lo)) AS w7,
      substring(days FROM lo + 1 FOR greatest(0, off + 30 - lo)) AS w30,
      substring(days FROM lo28 + 1 FOR greatest(0, off + 35 - lo28)) AS d28_34
    FROM (SELECT account_id, days, last_day - $2::date AS off,
            greatest(last_day - $2::date, 0) AS lo, greatest(last_day - $2::date + 28, 0) AS lo28
          FROM scoring_account_users
          WHERE account_id = ANY({_ROUND}) AND last_day >= $2::date - 34) x) y
  GROUP BY account_id),
d AS (
  SELECT account_id,
    sum(session_seconds) FILTER (WHERE day > $2::date - 30) AS session_seconds_30d,
    sum(touchpoints) FILTER (WHERE day > $2::date - 30) AS touchpoints_30d,
    sum(support_tickets) FILTER (WHERE day > $2::date - 30) AS support_tickets_30d,
    sum(escalations) FILTER (WHERE day > $2::date - 30) AS escalations_30d,
    sum(sentiment_sum) FILTER (WHERE day > $2::date - 30) AS sentiment_sum_30d,
    sum(sentiment_count) FILTER (WHERE day > $2::date - 30) AS sentiment_count_30d,
    sum(nps_promoters) AS nps_promoters_90d,
    sum(nps_detractors) AS nps_detractors_90d,
    sum(nps_responses) AS nps_responses_90d
  FROM scoring_account_days
  WHERE account_id = ANY({_ROUND}) AND day BETWEEN $2::date - 89 AND $2::date
  GROUP BY account_id),
ff AS (  -- one row per feature used (as uu: no DISTINCT sorting each account's rows)
  SELECT account_id, feature FROM scoring_feature_days
  WHERE account_id = ANY({_ROUND}) AND day BETWEEN $2::date - 29 AND $2::date
  GROUP BY account_id, feature),
f AS (
  SELECT account_id, count(*) AS features_used_30d,
    count(*) FILTER (WHERE feature = ANY($3::text[])) AS key_features_used_30d
  FROM ff GROUP BY account_id),
ss AS (  -- one row per contact heard from, joined to its contact once (not per day)
  SELECT account_id, contact_id FROM scoring_contact_days
  WHERE account_id = ANY({_ROUND}) AND day BETWEEN $2::date - 29 AND $2::date AND inbound > 0
  GROUP BY account_id, contact_id),
s AS (
  SELECT ss.account_id, count(*) AS inbound_contacts_30d
  FROM ss JOIN scoring_contacts c ON c.account_id = ss.account_id AND c.contact_id = ss.contact_id
  WHERE c.account_id = ANY({_ROUND}) AND NOT c.left_company
  GROUP BY ss.account_id),
ch AS (
  SELECT c.account_id,
    array_agg(COALESCE(
        (SELECT max(cd.day) FROM scoring_contact_days cd
         WHERE cd.account_id = c.account_id AND cd.contact_id = c.contact_id
           AND cd.day <= $2::date AND cd.inbound > 0),
        c.became_champion_day))
      FILTER (WHERE c.role = 'champion' AND NOT c.left_company) AS champion_reference_days,
    bool_or(c.was_champion AND c.left_company) AS former_champion_left
  FROM scoring_contacts c
  WHERE c.account_id = ANY({_ROUND}) AND (c.role = 'champion' OR c.was_champion)
  GROUP BY c.account_id)
SELECT a.account_id,
  acc.name, acc.seats_purchased, acc.lifecycle_stage, acc.onboarding_completed_at, acc.csm,
  acc.plan, acc.arr, acc.renewal_date,
  u.dau, u.wau, u.mau, u.users_d34_d28, u.user_days_30d, d.session_seconds_30d,
  d.touchpoints_30d, d.support_tickets_30d, d.escalations_30d, d.sentiment_sum_30d,
  d.sentiment_count_30d, d.nps_promoters_90d, d.nps_detractors_90d, d.nps_responses_90d,
  f.features_used_30d, f.key_features_used_30d, s.inbound_contacts_30d,
  ch.champion_reference_days, ch.former_champion_left,
  (SELECT max(x.day) FROM scoring_account_days x WHERE x.account_id = a.account_id
     AND x.day <= $2::date AND x.product_events > 0) AS last_activity_day,
  (SELECT max(x.day) FROM scoring_account_days x WHERE x.account_id = a.account_id
     AND x.day <= $2::date AND x.inbound > 0) AS last_inbound_day,
  (SELECT h.score FROM scoring_days h WHERE h.account_id = a.account_id
     AND h.day = $2::date - 7) AS score_7d_ago,
  sc.revision, sc.as_of AS prev_as_of, pub.revision AS published_revision,
  sc.score AS prev_score, sc.band AS prev_band, sc.kpis AS prev_kpis,
  sc.snapshot_digest AS prev_digest, acc.applied_seq
FROM a
JOIN acc ON acc.account_id = a.account_id
LEFT JOIN u ON u.account_id = a.account_id
LEFT JOIN d ON d.account_id = a.account_id
LEFT JOIN f ON f.account_id = a.account_id
LEFT JOIN s ON s.account_id = a.account_id
LEFT JOIN ch ON ch.account_id = a.account_id
LEFT JOIN sc ON sc.account_id = a.account_id
LEFT JOIN pub ON pub.account_id = a.account_id
"""


@dataclass(slots=True)
class AccountState:
    """One account as read for an evaluation: window aggregates, attributes, last score."""

    account_id: str
    windows: WindowAggregates
    name: str | None
    lifecycle_stage: str | None
    onboarding_completed_at: datetime | None
    csm: str | None
    score_7d_ago: float | None
    revision: int | None
    prev_as_of: date | None  # the day the current score is of (None: no score yet)
    published_revision: int
    prev_score: float | None
    prev_band: str | None
    prev_kpis: dict[str, KpiValue] | None
    prev_digest: int | None  # of the snapshot the current score published (scoring_0008)
    applied_seq: int  # batches applied when the windows were read (same snapshot)


def _i(v: Any) -> int:
    return int(v or 0)


# Planner settings for the window read (this transaction only):
# - one generic plan per connection, not one per round: planning was ~1.3 ms of
#   each round at a steady 2,000 events/s (rounds of ~30 accounts; a quarter of
#   PostgreSQL's statement time), and a custom plan knows little more (the array
#   is hidden from it, below; only the day and the key features). PostgreSQL
#   re-plans it whenever autoanalyze updates a table's statistics, and asyncpg
#   re-prepares it every 5 minutes, so it follows the tables as they grow. (Before
#   the array was hidden, nested loops off and the aggregates MATERIALIZED, a
#   generic plan could re-run the window aggregates per account.)
# - no JIT: once the tables are analysed, the estimated cost of reading 1,000
#   accounts passes ``jit_above_cost`` and compiling took ~1 s per round
#   (PostgreSQL 15 with LLVM, measured: 1,088 ms vs 31 ms without) for a query
#   that runs in tens of milliseconds;
# - random_page_cost 1.1 (the windows are hot in cache): the per-account tables are
#   read by key instead of scanned whole — a scan pays for every account stored
#   (1,000 of 63,000 accounts: 44 ms instead of 60 ms, analysed tables);
# - the joins in the order written (every window joins the account list): the
#   planner's search over the orders of nine relations took ~3 of the ~6–7 ms
#   spent planning each round, whatever its size, and a steady load makes rounds
#   of tens of accounts, tens of times a second;
# - the account array hidden from the estimates (``(SELECT $1)`` in the query): a
#   constant array is estimated element by element against each filtered
#   column's statistics, so planning grew with the round (1,000 accounts: 11.7 ms
#   planning for 12.7 ms of execution; now 1.0 ms, the same rows). The tables'
#   row counts are then guesses, so
# - no nested loops: on tables not analysed yet (a new deployment, the
#   100k-accounts bench) the planner joined the round's inbound contacts to their
#   contacts by a nested loop that took 10.5 of the read's 24 ms for 1,000
#   accounts (14 ms without). Only for the read (_AFTER_READ): the score UPDATE after
#   it must probe its keys; with nested loops off it hash-joined a scan of every
#   score (PostgreSQL's CPU per event at 2,000 events/s: +8 %).
_READ_SETTINGS = (
    "SET LOCAL plan_cache_mode = force_generic_plan; SET LOCAL jit = off;"
    " SET LOCAL random_page_cost = 1.1; SET LOCAL enable_nestloop = off;"
    " SET LOCAL join_collapse_limit = 1; SET LOCAL from_collapse_limit = 1"
)
_AFTER_READ = "SET LOCAL enable_nestloop TO DEFAULT"


async def load_states(
    pg: Pg, account_ids: Sequence[str], as_of: date, key_features: Sequence[str]
) -> list[AccountState]:
    """Everything needed to evaluate ``account_ids`` as of ``as_of``: one query."""
    if not account_ids:
        return []
    await pg.execute(_READ_SETTINGS)
    rows = await pg.fetch(_AGGREGATES_SQL, list(account_ids), as_of, list(key_features))
    await pg.execute(_AFTER_READ)
    out = []
    for r in rows:
        refs = tuple(x for x in (r["champion_reference_days"] or []) if x is not None)
        w = WindowAggregates(
            as_of=as_of,
            dau=_i(r["dau"]),
            wau=_i(r["wau"]),
            mau=_i(r["mau"]),
            user_days_30d=_i(r["user_days_30d"]),
            users_d34_d28=_i(r["users_d34_d28"]),
            seats_purchased=r["seats_purchased"],
            key_features_configured=len(set(key_features)),
            key_features_used_30d=_i(r["key_features_used_30d"]),
            features_used_30d=_i(r["features_used_30d"]),
            session_seconds_30d=float(r["session_seconds_30d"] or 0.0),
            last_activity_day=r["last_activity_day"],
            inbound_contacts_30d=_i(r["inbound_contacts_30d"]),
            touchpoints_30d=_i(r["touchpoints_30d"]),
            last_inbound_day=r["last_inbound_day"],
            champion_reference_days=refs,
            former_champion_left=bool(r["former_champion_left"]),
            nps_promoters_90d=_i(r["nps_promoters_90d"]),
            nps_detractors_90d=_i(r["nps_detractors_90d"]),
            nps_responses_90d=_i(r["nps_responses_90d"]),
            sentiment_sum_30d=float(r["sentiment_sum_30d"] or 0.0),
            sentiment_count_30d=_i(r["sentiment_count_30d"]),
            support_tickets_30d=_i(r["support_tickets_30d"]),
            escalations_30d=_i(r["escalations_30d"]),
        )
        out.append(
            AccountState(
                account_id=r["account_id"],
                windows=w,
                name=r["name"],
                lifecycle_stage=r["lifecycle_stage"],
                onboarding_completed_at=r["onboarding_completed_at"],
                csm=r["csm"],
                score_7d_ago=r["score_7d_ago"],
                revision=r["revision"],
                prev_as_of=r["prev_as_of"],
                published_revision=_i(r["published_revision"]),
                prev_score=r["prev_score"],
                prev_band=r["prev_band"],
                prev_kpis=r["prev_kpis"],
                prev_digest=r["prev_digest"],
                applied_seq=r["applied_seq"],
            )
        )
    return out


# ---------------------------------------------------------------- score writes

_MEASURE_FIELDS = ("kpi", "group", "points", "weight", "contribution", "left_on_table")


_PACK = operator.attrgetter(*_MEASURE_FIELDS)


def pack_measures(measures: Sequence[Any]) -> str:
    """Stored form of an explanation (JSON text), from measures with the
    :data:`_MEASURE_FIELDS` as attributes: one array per measure, without the KPI
    value (it is in ``kpis``). Keeps score and history rows small (under the
    TOAST threshold), which matters: they are written for every evaluation."""
    return orjson.dumps([_PACK(m) for m in measures]).decode()


def unpack_measures(packed: Sequence[Sequence[Any]], kpis: dict[str, Any]) -> list[dict[str, Any]]:
    """The explanation as the API shows it (:class:`shared.health.MeasureResult` fields)."""
    out = []
    for row in packed:
        m = dict(zip(_MEASURE_FIELDS, row, strict=True))
        m["value"] = kpis.get(m["kpi"])
        out.append(m)
    return out


@dataclass(slots=True)
class ScoreRow:
    """One evaluation to write (slots, not frozen: one is built per evaluation, and
    a frozen dataclass pays an ``object.__setattr__`` call per field)."""

    account_id: str
    as_of: date
    evaluated_at: datetime
    trigger: str
    score: float | None
    band: str | None
    score_delta_7d: float | None
    coverage: float
    model_version: str
    in_grace_period: bool
    kpis_json: str  # the KPI values as JSON text (encoded once per evaluation)
    measures_json: str  # the explanation as :func:`pack_measures` stores it
    revision: int
    prev_revision: int | None  # the revision the evaluation read (None: no score yet)
    prev_as_of: date | None  # the day of the current score the evaluation read
    evaluated_seq: int  # the account's applied_seq the evaluation read
    snapshot_digest: int  # what its snapshot says (``evaluation.digest``)


def json_texts(values: Sequence[str]) -> str:
    """JSON documents of ours (orjson's, which escapes every control character) as
    one text, split in SQL with ``string_to_array($n::text, chr(30))``: a text[]
    literal would escape every quote they hold."""
    joined = "\x1e".join(values)
    if joined.count("\x1e") != len(values) - 1:
        raise ValueError("a JSON document holds a raw record separator (0x1e)")
    return joined


_JSON_TEXTS = "string_to_array({}::text, chr(30))"
# The score statements' parameters, in :func:`_score_columns` order: column alias,
# the SQL taking parameter ``{}``, and how its column is sent (None: asyncpg's own
# encoding, for dates, timestamps, floats, bools and the nullable band).
_SCORE_PARAMS: tuple[tuple[str, str, Callable[[Any], str] | None], ...] = (
    ("a", "{}::text::text[]", text_array),
    ("d", "{}::date[]", None),
    ("e", "{}::timestamptz[]", None),
    ("s", "{}::float8[]", None),
    ("b", "{}::text[]", None),
    ("c", "{}::float8[]", None),
    ("m", "{}::text::text[]", text_array),
    ("g", "{}::bool[]", None),
    ("k", _JSON_TEXTS, json_texts),
    ("ms", _JSON_TEXTS, json_texts),
    ("tr", "{}::text::text[]", text_array),
    ("sd", "{}::float8[]", None),
    ("rv", "{}::text::bigint[]", int_array),
    ("es", "{}::text::bigint[]", int_array),
    ("dg", "{}::text::bigint[]", int_array),
)


def _score_unnest(n: int) -> tuple[str, str]:
    """``unnest(`` of the first ``n`` score parameters (left open: a statement may
    add its own) and their aliases."""
    params = _SCORE_PARAMS[:n]
    exprs = ", ".join(sql.format(f"${i + 1}") for i, (_, sql, _) in enumerate(params))
    return f"unnest({exprs}", ", ".join(alias for alias, _, _ in params)


_SCORE_UNNEST, _SCORE_COLUMNS = _score_unnest(len(_SCORE_PARAMS))
_HISTORY_UNNEST, _HISTORY_ALIASES = _score_unnest(10)  # up to the explanation


def _literals(cols: list[list[Any]]) -> list[Any]:
    """The score columns as the statements take them (see :data:`_SCORE_PARAMS`)."""
    return [
        col if send is None else send(col)
        for (_, _, send), col in zip(_SCORE_PARAMS[: len(cols)], cols, strict=True)
    ]


def _score_columns(rows: Sequence[ScoreRow]) -> list[list[Any]]:
    return [
        [r.account_id for r in rows],
        [r.as_of for r in rows],
        [r.evaluated_at for r in rows],
        [r.score for r in rows],
        [r.band for r in rows],
        [r.coverage for r in rows],
        [r.model_version for r in rows],
        [r.in_grace_period for r in rows],
        [r.kpis_json for r in rows],
        [r.measures_json for r in rows],
        [r.trigger for r in rows],
        [r.score_delta_7d for r in rows],
        [r.revision for r in rows],
        [r.evaluated_seq for r in rows],
        [r.snapshot_digest for r in rows],
    ]


_HISTORY_COLUMNS = (
    "evaluated_at, score, band, coverage, model_version, in_grace_period, kpis, measures"
)
_CURRENT_HISTORY_COLUMNS = ", ".join(f"s.{c}" for c in _HISTORY_COLUMNS.split(", "))
_HISTORY_UPSERT = f"""ON CONFLICT (account_id, day) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in _HISTORY_COLUMNS.split(", "))}"""


async def _keep_past_days(pg: Pg, rows: Sequence[ScoreRow]) -> None:
    """Move the current rows that ``rows`` replace with a later day to the history
    (their day's last evaluation), under their row lock and only at the revision
    the evaluation read (else its compare-and-set writes nothing either). A history
    row of that day written later (a rescore) is kept."""
    moving = [r for r in rows if r.prev_as_of is not None and r.prev_as_of < r.as_of]
    if not moving:
        return  # the common case: the account's current row is already of this day
    await pg.execute(
        f"""INSERT INTO scoring_history AS t (account_id, day, {_HISTORY_COLUMNS})
            SELECT s.account_id, s.as_of, {_CURRENT_HISTORY_COLUMNS}
            FROM scoring_scores s JOIN unnest($1::text[], $2::bigint[], $3::date[]) AS x(a, prv, d)
              ON s.account_id = x.a
            WHERE s.revision = x.prv AND s.as_of < x.d
            ORDER BY s.account_id FOR UPDATE OF s
            {_HISTORY_UPSERT} WHERE t.evaluated_at < EXCLUDED.evaluated_at""",
        [r.account_id for r in moving],
        [r.prev_revision for r in moving],
        [r.as_of for r in moving],
    )


async def _save_current(pg: Pg, rows: Sequence[ScoreRow], cols: list[list[Any]]) -> set[str]:
    """Write current scores (``cols``: their :func:`_score_columns`), compare-and-set
    on the revision each evaluation read: when two evaluations of one account race
    (the evaluator and a sweep, or two processes around a rebalance), the one that
    commits first wins and the other writes nothing (its account stays pending and
    is evaluated again). Nor does an evaluation as of an earlier day than the
    current row's (one that started just before midnight and commits after one
    that started after it): that row is also the later day's history."""
    written: set[str] = set()
    known = [i for i, r in enumerate(rows) if r.prev_revision is not None]
    if known:
        await _keep_past_days(pg, [rows[i] for i in known])
        got = await pg.fetch(
            f"""UPDATE scoring_scores AS t SET as_of = x.d, evaluated_at = x.e, score = x.s,
                  band = x.b, coverage = x.c, model_version = x.m, in_grace_period = x.g,
                  kpis = x.k::json, measures = x.ms::json, trigger = x.tr,
                  score_delta_7d = x.sd, revision = x.rv, snapshot_digest = x.dg,
                  evaluated_seq = CASE WHEN x.rv = t.revision
                    THEN GREATEST(t.evaluated_seq, x.es) ELSE x.es END
                FROM {_SCORE_UNNEST}, ${len(_SCORE_PARAMS) + 1}::text::bigint[])
                  AS x({_SCORE_COLUMNS}, prv)
                WHERE t.account_id = x.a AND t.revision = x.prv AND t.as_of <= x.d
                RETURNING t.account_id""",
            *_literals(_pick(cols, known)),
            int_array([rows[i].prev_revision or 0 for i in known]),
        )
        written.update(r[0] for r in got)
    fresh = [i for i, r in enumerate(rows) if r.prev_revision is None]
    if fresh:
        got = await pg.fetch(
            f"""INSERT INTO scoring_scores (account_id, as_of, evaluated_at, score, band,
                  coverage, model_version, in_grace_period, kpis, measures, trigger,
                  score_delta_7d, revision, evaluated_seq, snapshot_digest)
                SELECT a, d, e, s, b, c, m, g, k::json, ms::json, tr, sd, rv, es, dg
                FROM {_SCORE_UNNEST}) AS x({_SCORE_COLUMNS})
                ON CONFLICT (account_id) DO NOTHING RETURNING account_id""",
            *_literals(_pick(cols, fresh)),
        )
        written.update(r[0] for r in got)
    return written


def _pick(cols: list[list[Any]], index: Sequence[int]) -> list[list[Any]]:
    """The columns of the rows at ``index`` (all of them when it is every row)."""
    if len(index) == len(cols[0]):
        return cols
    return [[c[i] for i in index] for c in cols]


async def save_scores(pg: Pg, rows: Sequence[ScoreRow], *, current: bool = True) -> set[str]:
    """Write the evaluations ``rows``; returns the accounts written.

    ``current``: as the accounts' current scores (whose ``evaluated_at`` / ``as_of``
    tell the sweeper when each was last evaluated), which are also their history
    rows of that day (``scoring_days``); an account lost to a concurrent evaluation
    is not written (see :func:`_save_current`). Otherwise (a rescore of a past day):
    as history rows of their day, the current scores untouched."""
    if not rows:
        return set()
    # In key order, as every writer of these rows does: two evaluation rounds that
    # overlap (an account taken again while its previous round runs) then wait for
    # each other instead of deadlocking.
    rows = sorted(rows, key=lambda r: r.account_id)
    cols = _score_columns(rows)
    if current:
        return await _save_current(pg, rows, cols)
    await pg.execute(
        f"""INSERT INTO scoring_history AS t (account_id, day, {_HISTORY_COLUMNS})
           SELECT a, d, e, s, b, c, m, g, k::json, ms::json
           FROM {_HISTORY_UNNEST}) AS x({_HISTORY_ALIASES})
           {_HISTORY_UPSERT}""",
        *_literals(cols[:10]),
    )
    return {r.account_id for r in rows}


async def pending_accounts(pg: Pg, limit: int | None = None) -> list[str]:
    """Accounts with batches applied that their current score does not reflect yet
    (waiting for the evaluator, or left by a crash or a rebalance)."""
    rows = await pg.fetch(
        """SELECT a.account_id FROM scoring_accounts a
           LEFT JOIN scoring_scores s ON s.account_id = a.account_id
           WHERE a.applied_seq > COALESCE(s.evaluated_seq, 0) LIMIT $1""",
        limit,
    )
    return [r[0] for r in rows]


async def mark_published(pg: Pg, revisions: dict[str, int]) -> None:
    if not revisions:
        return
    accounts = sorted(revisions)  # key order: concurrent rounds never deadlock
    await pg.execute(
        """INSERT INTO scoring_published AS t (account_id, revision)
           SELECT * FROM unnest($1::text::text[], $2::text::bigint[])
           ON CONFLICT (account_id) DO UPDATE
           SET revision = GREATEST(t.revision, EXCLUDED.revision)""",
        text_array(accounts),
        int_array([revisions[a] for a in accounts]),
    )


async def stale_accounts(pg: Pg, *, today: date, stale_before: datetime, limit: int) -> list[str]:
    """Lock and return scored accounts due for a time-driven evaluation: evaluated
    before ``stale_before`` or before ``today`` (SKIP LOCKED: a second scoring
    process, or the consumer holding an account, is skipped), oldest first.

    "Before today" is ``evaluated_at`` before today's midnight (UTC): every
    evaluation writes ``as_of`` as the UTC day of its ``evaluated_at``. That makes
    staleness one range of the ``evaluated_at`` index, so a poll reads the stale
    rows (and accounts idle for over 400 days, skipped) instead of every account
    (88 ms per poll with 63,000 accounts stored and none stale, before). Accounts
    with no score yet are not swept: they are pending, and the evaluator takes
    them (refilled from ``pending_accounts`` on every partition assignment)."""
    cutoff = max(stale_before, datetime.combine(today, time(0), tzinfo=UTC))
    stale = "s.evaluated_at < $2 AND a.last_event_day > $1::date - 400"
    rows = await pg.fetch(
        f"""SELECT a.account_id FROM scoring_scores s
            JOIN scoring_accounts a ON a.account_id = s.account_id
            WHERE {stale}
            ORDER BY s.evaluated_at
            LIMIT $3 FOR UPDATE OF a SKIP LOCKED""",
        today,
        cutoff,
        limit,
    )
    if not rows:
        return []
    # Re-check with a fresh snapshot now that the locks are held: an account whose
    # lock another sweeper released just before ours was taken has been evaluated
    # by it, but the locking statement judged it on its older snapshot.
    still = await pg.fetch(
        f"""SELECT a.account_id FROM scoring_scores s
            JOIN scoring_accounts a ON a.account_id = s.account_id
            WHERE a.account_id = ANY($3::text[]) AND {stale}""",
        today,
        cutoff,
        [r[0] for r in rows],
    )
    return [r[0] for r in still]


async def unpublished_accounts(pg: Pg, older_than: datetime, limit: int) -> list[str]:
    """Accounts whose latest snapshot was committed but never published (a crash or
    a broker failure between commit and publish): locked, for republishing."""
    rows = await pg.fetch(
        """SELECT s.account_id FROM scoring_scores s
           JOIN scoring_accounts a ON a.account_id = s.account_id
           LEFT JOIN scoring_published p ON p.account_id = s.account_id
           WHERE COALESCE(p.revision, 0) < s.revision AND s.evaluated_at < $1
           LIMIT $2 FOR UPDATE OF a SKIP LOCKED""",
        older_than,
        limit,
    )
    return [r[0] for r in rows]


async def accounts_active_on(pg: Pg, day: date, after: str, limit: int) -> list[str]:
    """Accounts that existed on ``day`` (first event on or before it) and had activity
    in the 400 days before it, in key order after ``after`` (paging)."""
    rows = await pg.fetch(
        """SELECT account_id FROM scoring_accounts
           WHERE first_event_day <= $1::date AND last_event_day > $1::date - 400
             AND account_id > $2
           ORDER BY account_id LIMIT $3""",
        day,
        after,
        limit,
    )
    return [r[0] for r in rows]


async def mark_for_reevaluation(pg: Pg) -> None:
    """Make every account stale, so the sweeper re-evaluates (and republishes) it."""
    await pg.execute("UPDATE scoring_scores SET evaluated_at = '-infinity'")


def days_back(today: date, n: int) -> list[date]:
    return [today - timedelta(days=i) for i in range(n - 1, -1, -1)]
