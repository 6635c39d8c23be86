"""How the scoring service's hot queries are planned: the window read (settings a
user's PostgreSQL configuration must not turn into a slow evaluation round) and
the accounts list (read from an index, not a sort of every account)."""

from __future__ import annotations

import random
from datetime import date
from typing import Any

import orjson

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
        "force_custom_plan",
        1.1,
    )
    assert after == "auto"


async def test_the_default_accounts_page_is_read_in_order_from_an_index(
    env: dict[str, str],
) -> None:
    """Worst first (the dashboard's and the API's default) pages by reading the
    ``ix_scoring_scores_worst_first`` index, not by sorting every account: with
    scans made prohibitively expensive, the planner still finds a plan without a
    Sort node only if the index matches the sort expression of ``read_model``."""
    queries: list[tuple[str, tuple[Any, ...]]] = []

    class Recorder:  # the read model's only use of its pool here: one fetch
        async def fetch(self, sql: str, *args: Any) -> list[Any]:
            queries.append((sql, args))
            return []

    cursor = read_model._encode_cursor("score", 42.5, "acme")
    for kwargs in ({}, {"cursor": cursor}, {"band": "red", "cursor": cursor}):
        await read_model.accounts_page(Recorder(), **kwargs)
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg, pg.transaction():
            await pg.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_sort = off")
            plans = [
                "\n".join(r[0] for r in await pg.fetch("EXPLAIN " + sql, *args))
                for sql, args in queries
            ]
    finally:
        await pool.close()
    for plan in plans:
        assert "ix_scoring_scores_worst_first" in plan, plan
        assert "Sort" not in plan, plan


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
