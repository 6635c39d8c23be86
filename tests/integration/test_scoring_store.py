"""How the scoring service's hot queries are planned: the window read (settings a
user's PostgreSQL configuration must not turn into a slow evaluation round) and
the accounts list (read from an index, not a sort of every account)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import orjson
import pytest

from services.scoring import read_model, store
from tests.integration.scoring_support import settings_from


async def test_the_window_read_is_never_jit_compiled(env: dict[str, str]) -> None:
    """A server with JIT on (the default where PostgreSQL is built with LLVM) would
    compile the window read once its estimated cost passes ``jit_above_cost``:
    ~1 s per round on PostgreSQL 15, for a query that runs in tens of ms. Here
    every query of the transaction would be compiled, and the read turns it off."""
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg, pg.transaction():
            await pg.execute("SET LOCAL jit_above_cost = 0")
            await store.load_states(pg, ["nobody"], date(2026, 1, 1), [])
            settings = await pg.fetchrow(
                "SELECT current_setting('jit') AS jit,"
                " current_setting('plan_cache_mode') AS plans,"
                " current_setting('random_page_cost')::float8 AS page_cost"
            )
        async with pool.acquire() as pg:  # for that transaction only
            after = await pg.fetchval("SELECT current_setting('plan_cache_mode')")
    finally:
        await pool.close()
    assert (settings["jit"], settings["plans"], settings["page_cost"]) == (
        "off",
        "force_generic_plan",
        1.1,
    )
    assert after == "auto"


async def test_the_window_reads_planner_settings_end_with_the_read(env: dict[str, str]) -> None:
    """The read is planned without nested loops (its row counts are guesses), but
    the score writes after it in the same transaction update rows by key, which is
    a nested loop: left off, the UPDATE hash-joined a scan of every score row."""
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg, pg.transaction():
            await store.load_states(pg, ["nobody"], date(2026, 1, 1), [])
            after_read = await pg.fetchval("SELECT current_setting('enable_nestloop')")
    finally:
        await pool.close()
    assert after_read == "on"


@contextlib.asynccontextmanager
async def _rolled_back(env: dict[str, str]) -> AsyncIterator[Any]:
    """A connection inside a transaction that is rolled back: rows a test inserts
    leave nothing behind for the module's other tests."""
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg:
            tr = pg.transaction()
            await tr.start()
            try:
                yield pg
            finally:
                await tr.rollback()
    finally:
        await pool.close()


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


def _shape(plan: dict[str, Any]) -> str:
    """The plan's nodes, nested: what a failed assertion shows."""
    inner = ", ".join(_shape(c) for c in plan.get("Plans", []))
    name = plan["Node Type"] + (f" {plan['Index Name']}" if "Index Name" in plan else "")
    return f"{name}({inner})" if inner else name


@pytest.mark.parametrize("sort", list(read_model.SORTS))
async def test_every_accounts_page_is_read_in_order_from_an_index(
    env: dict[str, str], sort: str
) -> None:
    """Every order of the list (first page, a later page, filtered; for a nullable
    key, the valued accounts and the null ones after them) pages by reading an
    index, not by sorting every account, and a cursor is where the index read
    starts: with scans and sorts made prohibitively expensive, the planner finds
    such a plan only if an index matches ``read_model``'s sort expression."""
    queries: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:  # the read model's only use of its pool here: fetch (no rows)
        async def fetch(self, sql: str, *args: Any) -> list[Any]:
            queries.append((sql, args))
            return []

    keys: list[Any] = ["acme"] if sort in ("name", "-name") else [42.5, 1e9, -1e9]
    cursors = [read_model._encode_cursor(sort, k, "acme") for k in keys]
    pages: list[dict[str, Any]] = [
        {},
        *({"cursor": c} for c in cursors),
        {"band": "red", "csm": "ana", "cursor": cursors[0]},
    ]
    for kwargs in pages:
        await read_model.accounts_page(Recorder(), sort=sort, **kwargs)
    index = {"score": "_score", "delta": "_delta", "name": "_name"}[sort.lstrip("-")]
    async with _rolled_back(env) as pg:
        await pg.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
        explained = [
            await pg.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args) for sql, args in queries
        ]
    for doc, (_, args) in zip(explained, queries, strict=True):  # decoded by the json codec
        plan = (orjson.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
        nodes = _nodes(plan)
        shape = _shape(plan)
        scans = [n for n in nodes if index in n.get("Index Name", "")]
        assert scans, shape
        if "acme" in args:  # from a cursor: where the page starts is found in the index
            assert any("account_id" in n.get("Index Cond", "") for n in scans), scans
        assert not any(n["Node Type"] == "Seq Scan" for n in nodes), shape
        assert not any(n["Node Type"] == "Sort" for n in nodes), shape


async def test_every_order_pages_through_every_account_once_nulls_last(
    env: dict[str, str],
) -> None:
    """Paging 3 at a time through accounts with ties, unscored accounts and no
    names gives, in every order and with a filter, exactly the order a user expects:
    by the key, then account id, nulls last either way."""
    rnd = random.Random(11)
    rows = []
    for i in range(40):
        score = None if i % 7 == 0 else float(rnd.choice([10, 35.5, 50, 72.25, 90]))
        delta = None if i % 5 == 0 else float(rnd.choice([-12.5, 0, 3, 8]))
        band = None if score is None else ("red" if score < 40 else "green")
        name = None if i % 6 == 0 else rnd.choice(["Acme", "Globex", "Initech"])
        rows.append((f"acct{i:02d}", name, score, delta, band))
    async with _rolled_back(env) as pg:
        await pg.executemany(
            """INSERT INTO scoring_accounts (account_id, name, first_event_day,
                   last_event_day) VALUES ($1, $2, '2026-01-01', '2026-01-01')""",
            [(a, n) for a, n, *_ in rows],
        )
        await pg.executemany(
            """INSERT INTO scoring_scores (account_id, as_of, evaluated_at, trigger,
                   score, band, score_delta_7d, coverage, model_version,
                   in_grace_period, kpis, measures, revision)
               VALUES ($1, '2026-01-01', now(), 'events', $2, $3, $4, 1, 'v1',
                   false, '{}', '[]', 1)""",
            [(a, sc, b, d) for a, _, sc, d, b in rows],
        )

        def expected(sort: str, band: str | None) -> list[str]:
            """By the key then account id, in the sort's direction; nulls last."""
            desc, field = sort.startswith("-"), sort.lstrip("-")
            chosen = [r for r in rows if band is None or r[4] == band]
            if field == "name":
                keyed = [((r[1] or r[0]), r[0]) for r in chosen]
                return [a for _, a in sorted(keyed, reverse=desc)]
            v = {"score": 2, "delta": 3}[field]
            valued = sorted(((r[v], r[0]) for r in chosen if r[v] is not None), reverse=desc)
            nulls = sorted((r[0] for r in chosen if r[v] is None), reverse=desc)
            return [a for _, a in valued] + nulls

        for sort in read_model.SORTS:
            for band in (None, "green"):
                seen: list[str] = []
                cursor = None
                while True:
                    page = await read_model.accounts_page(
                        pg, sort=sort, band=band, limit=3, cursor=cursor
                    )
                    seen += [a["account_id"] for a in page["accounts"]]
                    cursor = page["next_cursor"]
                    if cursor is None:
                        break
                assert seen == expected(sort, band), (sort, band)


async def test_array_literals_carry_any_text_and_int_unchanged(env: dict[str, str]) -> None:
    """The hot statements send their arrays as literals (store.text_array,
    int_array, and json_texts for the stored KPIs and explanations): every id a
    client may send — quotes, backslashes, braces, commas, spaces, the word NULL,
    empty-looking or non-ASCII text — and every JSON document arrives as itself."""
    rnd = random.Random(7)
    alphabet = 'ab,{}" \\\t\nNUL\x1f\u00e9\U0001f600'
    cases: list[list[str]] = [
        [],
        ["", "NULL", "null", " ", '"', "\\", "{}", "a,b", '\\"', "é😀"],
    ]
    cases += [
        ["".join(rnd.choice(alphabet) for _ in range(rnd.randrange(1, 12))) for _ in range(50)]
        for _ in range(40)
    ]
    ints = [[], [0, 1, 4095, 4096, 2**31 - 1], [rnd.randrange(0, 10**6) for _ in range(500)]]
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg:
            for values in cases:
                got = await pg.fetchval("SELECT $1::text::text[]", store.text_array(values))
                assert got == values
            for numbers in ints:
                got = await pg.fetchval("SELECT $1::text::bigint[]", store.int_array(numbers))
                assert got == numbers
            docs = [orjson.dumps(v).decode() for v in cases[1] + ["\x1e\x00\n", {"k": '"'}]]
            got = await pg.fetchval(
                "SELECT string_to_array($1::text, chr(30))", store.json_texts(docs)
            )
            assert [orjson.loads(d) for d in got] == [orjson.loads(d) for d in docs]
    finally:
        await pool.close()


async def test_filter_menus_list_each_csm_and_stage_once_from_the_indexes(
    env: dict[str, str],
) -> None:
    """The dashboard's filter menus: every CSM (the first 500 in order) and every
    lifecycle stage once, none for accounts without one; read by index probes,
    never by reading every account."""
    csms = [None, *(f"csm-{i:03d}" for i in range(600))]
    stages = [None, "onboarding", "active", "renewal"]
    async with _rolled_back(env) as pg:
        await pg.executemany(
            """INSERT INTO scoring_accounts (account_id, csm, lifecycle_stage,
                   first_event_day, last_event_day)
               VALUES ($1, $2, $3, '2026-01-01', '2026-01-01')""",
            [(f"m{i}", csms[i % len(csms)], stages[i % 4]) for i in range(2_000)],
        )
        got = await read_model.choices(pg)
        await pg.execute("SET LOCAL enable_seqscan = off")
        plans = [
            "\n".join(
                r[0]
                for r in await pg.fetch(
                    "EXPLAIN " + read_model._DISTINCT.format(col=col, limit=500)
                )
            )
            for col in ("csm", "lifecycle_stage")
        ]
    named = sorted(c for c in csms if c is not None)
    assert got == {"csms": named[:500], "stages": sorted(s for s in stages if s is not None)}
    for plan in plans:
        assert "Seq Scan" not in plan and "Bitmap" not in plan, plan
        assert "ix_scoring_accounts_" in plan, plan


async def test_the_window_read_finds_accounts_by_key_whatever_the_list_indexes(
    env: dict[str, str],
) -> None:
    """The accounts list's indexes have account_id as a column too. While every
    score and delta is still null (a new deployment) and no account has a name, an
    index like that looked to the planner like a cheap way to find the window
    read's accounts once the scores had been rewritten a few times, and it scanned
    all of it (16 ms instead of 5 for 1,000 of 63,000 accounts). The read must find
    them by their keys."""
    async with _rolled_back(env) as pg:
        ids = [f"w{i:05d}" for i in range(20_000)]
        await pg.execute(
            """INSERT INTO scoring_accounts (account_id, first_event_day, last_event_day)
               SELECT id, '2026-01-01', '2026-01-01' FROM unnest($1::text[]) id""",
            ids,
        )
        await pg.execute(
            """INSERT INTO scoring_scores (account_id, as_of, evaluated_at, trigger,
                   coverage, model_version, in_grace_period, kpis, measures, revision)
               SELECT id, '2026-01-01', now(), 'events', 0, 'v1', false, $2, $3, 1
               FROM unnest($1::text[]) id""",
            ids,
            orjson.dumps({f"kpi_{i}": None for i in range(20)}).decode(),
            orjson.dumps([[f"kpi_{i}", None, None, 0.0, 0.0, 0.0] for i in range(15)]).decode(),
        )
        for _ in range(3):  # as evaluations do (no HOT update: evaluated_at is indexed)
            await pg.execute(
                "UPDATE scoring_scores SET evaluated_at = evaluated_at + interval '1 s',"
                " revision = revision + 1"
            )
        await pg.execute("ANALYZE scoring_accounts; ANALYZE scoring_scores")
        await pg.execute(store._READ_SETTINGS)
        plan = await pg.fetchval(
            "EXPLAIN (FORMAT JSON) " + store._AGGREGATES_SQL,
            random.Random(3).sample(ids, 1_000),
            date(2026, 1, 1),
            [],
        )
    nodes = _nodes((orjson.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert used <= {
        "pk_scoring_accounts",
        "pk_scoring_scores",
        "pk_scoring_published",
        "pk_scoring_account_days",
        "pk_scoring_account_users",
        "pk_scoring_feature_days",
        "pk_scoring_contact_days",
        "pk_scoring_contacts",
        "pk_scoring_history",
    }, used
    assert {"pk_scoring_accounts", "pk_scoring_scores"} <= used, used
