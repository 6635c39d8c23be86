"""The alerts part of the ``healthscore`` CLI: ``rules apply`` and ``deliveries replay``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import typer

from services.alerts import store
from shared import db


def apply_rules(file: str, database_url: Callable[[], str]) -> int:
    """``database_url`` is asked only once the file is known to be valid."""
    try:
        items = store.read_rules_file(Path(file))
    except store.RulesFileError as exc:
        typer.echo(str(exc), err=True)
        return 2

    async def go(url: str) -> tuple[int, int]:
        engine = db.create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await store.upsert_rules(conn, items)
        finally:
            await engine.dispose()

    created, updated = asyncio.run(go(database_url()))
    typer.echo(f"{len(items)} rules applied: {created} created, {updated} updated")
    return 0


def replay_deliveries(
    delivery_id: str | None, since: str | None, database_url: Callable[[], str]
) -> int:
    if (delivery_id is None) == (since is None):
        typer.echo("give exactly one of --id ID or --since TIME", err=True)
        return 2
    when = None
    if since is not None:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            typer.echo(f"--since: not an ISO 8601 time: {since!r}", err=True)
            return 2
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)

    async def go(url: str) -> list[str]:
        engine = db.create_engine(url, pool_size=1)
        try:
            async with engine.begin() as conn:
                return await store.replay(conn, delivery_id=delivery_id, since=when)
        finally:
            await engine.dispose()

    ids = asyncio.run(go(database_url()))
    if delivery_id is not None and not ids:
        typer.echo(f"no failed or disabled delivery {delivery_id}", err=True)
        return 1
    typer.echo(f"{len(ids)} deliveries queued again")
    for i in ids:
        typer.echo(i)
    return 0
