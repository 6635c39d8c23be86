"""Active users (DAU, WAU, MAU, users of days 28–34, Σ daily distinct users) as
stored: one row per (account, user) with a bitmap of its active days
(``scoring_account_users``, migration scoring_0007). Random activity, applied in
random batches and out of order (late events), must read back exactly what the
window maths computes over the raw (user, day) pairs — for today and for any past
day ``healthscore rescore`` reads. And the migration must carry an existing
deployment's user-days over, and back."""

from __future__ import annotations

import asyncio
import random
from datetime import date, timedelta

import asyncpg
from alembic import command

from services.scoring import store, windows
from services.scoring.buckets import BatchDeltas, fold
from shared.events import EVENT_ADAPTER
from shared.migrate import alembic_config, upgrade
from tests.infra import Infra, drop_database, new_database
from tests.integration.scoring_support import settings_from

T = date(2026, 6, 30)
Activity = dict[str, list[tuple[str, date]]]  # account → (user, day) pairs


def _activity(rnd: random.Random) -> Activity:
    """Three accounts: mostly recent days, some a year back, a few beyond the 400
    days retained (older than any window reads), and one day ahead (clock skew)."""
    out: Activity = {}
    for account, users in (("small", 3), ("mid", 12), ("wide", 40)):
        pairs = set()
        for _ in range(users * 25):
            back = rnd.choice(
                [rnd.randrange(0, 40), rnd.randrange(0, 40), rnd.randrange(0, 420), -1]
            )
            pairs.add((f"u{rnd.randrange(users)}", T - timedelta(days=back)))
        out[account] = sorted(pairs)
    return out


def _deltas(batch: list[tuple[str, str, date]]) -> BatchDeltas:
    """The consumer's deltas (``buckets.fold``) of one login per (account, user, day)."""
    return fold(
        [
            EVENT_ADAPTER.validate_python(
                {
                    "id": f"{account}-{user}-{day}",
                    "type": "login",
                    "account_id": account,
                    "user_id": user,
                    "timestamp": f"{day.isoformat()}T12:00:00+00:00",
                    "received_at": f"{T.isoformat()}T12:00:00+00:00",
                }
            )
            for account, user, day in batch
        ]
    )


def _expected(pairs: list[tuple[str, date]], as_of: date) -> dict[str, int]:
    early = {u for u, d in pairs if as_of - timedelta(days=34) <= d <= as_of - timedelta(days=28)}
    return {
        "dau": windows.distinct_in_window(pairs, as_of, 1),
        "wau": windows.distinct_in_window(pairs, as_of, 7),
        "mau": windows.distinct_in_window(pairs, as_of, 30),
        "users_d34_d28": len(early),
        "user_days_30d": windows.daily_distinct_sum(pairs, as_of, 30),
    }


async def _read(pg: asyncpg.Connection, accounts: list[str], as_of: date) -> dict[str, dict]:
    async with pg.transaction():
        states = await store.load_states(pg, accounts, as_of, [])
    return {
        s.account_id: {
            "dau": s.windows.dau,
            "wau": s.windows.wau,
            "mau": s.windows.mau,
            "users_d34_d28": s.windows.users_d34_d28,
            "user_days_30d": s.windows.user_days_30d,
        }
        for s in states
    }


AS_OF = [T + timedelta(days=1), T, T - timedelta(days=1), T - timedelta(days=6)] + [
    T - timedelta(days=n) for n in (29, 30, 34, 35, 90, 200, 399)
]


async def test_active_users_read_back_exactly_from_random_late_batches(
    env: dict[str, str],
) -> None:
    rnd = random.Random(11)
    activity = _activity(rnd)
    rows = [(a, u, d) for a, pairs in activity.items() for u, d in pairs]
    rnd.shuffle(rows)  # out of order: late events land after later days
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg:
            while rows:
                cut = rnd.randrange(1, 60)
                batch, rows = rows[:cut], rows[cut:]
                async with pg.transaction():
                    await store.apply_deltas(pg, store.window_statements(_deltas(batch)))
            # a resend of everything changes nothing (each user-day counts once)
            again = [(a, u, d) for a, pairs in activity.items() for u, d in pairs[:30]]
            async with pg.transaction():
                await store.apply_deltas(pg, store.window_statements(_deltas(again)))
            for as_of in AS_OF:
                got = await _read(pg, sorted(activity), as_of)
                want = {a: _expected(pairs, as_of) for a, pairs in activity.items()}
                assert got == want, as_of
    finally:
        await pool.close()


async def test_the_migration_carries_user_days_over_and_back(infra: Infra) -> None:
    """A deployment of the previous release (scoring_0006) has (account, day, user)
    rows; after the migration the same activity reads back from the bitmaps. A
    scoring process of the previous release still running adds rows to the old
    table: the trigger puts them into the bitmaps too. A downgrade rebuilds the
    old table and its daily counts, this release's activity included."""
    rnd = random.Random(5)
    activity = _activity(rnd)
    rows = [(a, d, u) for a, pairs in activity.items() for u, d in pairs if d > T - timedelta(400)]
    old_rows, late_rows = rows[: len(rows) // 2], rows[len(rows) // 2 :]
    url = await new_database(infra, "user_bits_migration")
    cfg = alembic_config(url)
    try:
        await asyncio.to_thread(command.downgrade, cfg, "scoring_0006")
        pg = await asyncpg.connect(store.dsn(url))
        try:
            await pg.executemany(
                "INSERT INTO scoring_user_days (account_id, day, user_id) VALUES ($1, $2, $3)",
                old_rows,
            )
            await asyncio.to_thread(upgrade, url)
            # the previous release, still running mid-rollout, writes the old table
            await pg.executemany(
                "INSERT INTO scoring_user_days (account_id, day, user_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                late_rows,
            )
            for account in activity:
                await pg.execute(
                    "INSERT INTO scoring_accounts (account_id, first_event_day, last_event_day)"
                    " VALUES ($1, $2, $2)",
                    account,
                    T,
                )
            pairs = {a: [(u, d) for a2, d, u in rows if a2 == a] for a in activity}
            for as_of in AS_OF:
                got = await _read(pg, sorted(activity), as_of)
                assert {
                    a: {k: v[k] for k in ("dau", "wau", "mau", "users_d34_d28")}
                    for a, v in got.items()
                } == {
                    a: {k: v for k, v in _expected(p, as_of).items() if k != "user_days_30d"}
                    for a, p in pairs.items()
                }, as_of
            # this release's own writes, then back to the previous release
            extra = [("mid", "u_new", T), ("wide", "u_new", T - timedelta(days=3))]
            async with pg.transaction():
                await store.apply_deltas(pg, store.window_statements(_deltas(extra)))
            await asyncio.to_thread(command.downgrade, cfg, "scoring_0006")
            back = await pg.fetch("SELECT account_id, day, user_id FROM scoring_user_days")
            assert sorted(tuple(r) for r in back) == sorted(
                {*rows, *((a, d, u) for a, u, d in extra)}
            )
            counts = await pg.fetch(
                "SELECT account_id, day, active_users FROM scoring_account_days"
                " WHERE account_id = 'wide' AND day = $1",
                T - timedelta(days=3),
            )
            assert [r["active_users"] for r in counts] == [
                len(
                    {
                        u
                        for a, d, u in [*rows, ("wide", T - timedelta(days=3), "u_new")]
                        if a == "wide" and d == T - timedelta(days=3)
                    }
                )
            ]
        finally:
            await pg.close()
    finally:
        await drop_database(infra, url)
