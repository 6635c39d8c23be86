"""Postgres adapter for the user → account links of the Segment endpoints."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from services.ingest.tables import user_accounts


async def load_links(engine: AsyncEngine, user_ids: Collection[str]) -> dict[str, str]:
    """The stored account of each of ``user_ids`` that has one (one query)."""
    if not user_ids:
        return {}
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(user_accounts.c.user_id, user_accounts.c.account_id).where(
                user_accounts.c.user_id.in_(list(user_ids))
            )
        )
        return {r.user_id: r.account_id for r in rows}


async def store_links(engine: AsyncEngine, links: Mapping[str, str]) -> None:
    """Upsert links (one statement, one transaction)."""
    if not links:
        return
    stmt = insert(user_accounts).values(
        [{"user_id": u, "account_id": a} for u, a in sorted(links.items())]
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[user_accounts.c.user_id],
        set_={"account_id": stmt.excluded.account_id, "updated_at": func.now()},
    )
    async with engine.begin() as conn:
        await conn.execute(stmt)
