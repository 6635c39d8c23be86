"""Schema migrations (Alembic), run by ``healthscore migrate``.

Each owner keeps its own migration branch: ``shared`` (API keys) under
``shared/migrations/versions``, and one per service under
``services/<service>/migrations`` (branch label = service name). ``migrate``
upgrades every branch to its head. Services refuse to start on a database that
is not at every head.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)
_ROOT = Path(__file__).resolve().parent.parent


def version_locations() -> list[Path]:
    locations = [_ROOT / "shared" / "migrations" / "versions"]
    for service in ("ingest", "scoring", "alerts"):
        path = _ROOT / "services" / service / "migrations"
        if any(path.glob("*.py")):
            locations.append(path)
    return locations


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_ROOT / "shared" / "migrations"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", os.pathsep.join(str(p) for p in version_locations()))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str) -> None:
    """Bring every migration branch to its head (idempotent). Blocking; call it
    from a thread when inside an event loop."""
    command.upgrade(alembic_config(database_url), "heads")


def expected_heads() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config("postgresql://unused/")).get_heads())


class NotMigrated(RuntimeError):
    pass


async def check_migrated(engine: AsyncEngine) -> None:
    """Raise :class:`NotMigrated` with a clear message unless the schema is current.

    A database *ahead* of this code (a revision this code does not know: a newer
    release ran ``migrate`` during a rolling upgrade) is accepted with a warning —
    migrations are written to be backwards compatible for one release — so old
    pods that restart mid-rollout keep running.
    """
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
    except ProgrammingError:
        rows = []
    current = {r[0] for r in rows}
    expected, known = await asyncio.to_thread(_heads_and_known)
    if current == expected:
        return
    if current - known:
        log.warning(
            "the database schema is newer than this release",
            extra={"unknown_revisions": sorted(current - known)},
        )
        return
    raise NotMigrated(
        "the database schema is not up to date "
        f"(at {sorted(current) or 'nothing'}, need {sorted(expected)}): "
        "run `healthscore migrate`"
    )


def _heads_and_known() -> tuple[set[str], set[str]]:
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused/"))
    return set(script.get_heads()), {rev.revision for rev in script.walk_revisions()}
