"""Alembic environment: runs migrations over asyncpg, one transaction per branch step."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from shared.db import create_engine

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_engine(config.attributes["database_url"], pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            # Serialise concurrent `migrate` runs (several pods starting at once).
            await conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")
            await conn.run_sync(_run)
            await conn.commit()
            await conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `healthscore migrate`")
asyncio.run(_main())
