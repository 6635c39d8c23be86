"""How the scoring service's window read is planned: settings a user's PostgreSQL
configuration must not be able to turn into a slow evaluation round."""

from __future__ import annotations

from datetime import date

from services.scoring import store
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
