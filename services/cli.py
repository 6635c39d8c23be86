"""The ``healthscore`` command: run the stack or one service, migrate, manage keys."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from shared.embedded import DEFAULT_DATA_DIR
from shared.settings import CommonSettings

app = typer.Typer(
    help="Healthscore: real-time, explainable customer health scores.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

HostOpt = Annotated[str, typer.Option(help="Interface to listen on.")]


def _exit(code: int) -> None:
    raise typer.Exit(code)


def _fail(command: str, message: str, code: int = 2) -> NoReturn:
    """One line on stderr, prefixed with the command (``healthscore keys create: …``)."""
    typer.echo(f"healthscore {command}: {message}", err=True)
    raise typer.Exit(code)


def _settings_problem(exc: ValidationError) -> str:
    return "invalid setting: " + "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )


def _database_url(command: str) -> tuple[str, bool]:
    """``DATABASE_URL`` when it is set; else the embedded PostgreSQL of the running
    ``make run`` (``healthscore dev``), found through its data folder, ``.healthscore``
    here or in a parent folder. Never the default 127.0.0.1:5432, which is not where
    ``make run`` keeps its data. Exits with a one-line message when there is none.
    Returns the URL and whether it is the embedded server's."""
    from shared.embedded import EmbeddedPostgres, find_data_dir, postgres_data_dir

    try:
        settings = CommonSettings()
    except ValidationError as exc:
        _fail(command, _settings_problem(exc))
    if "database_url" in settings.model_fields_set:
        return settings.database_url, False
    data_dir = find_data_dir(Path.cwd())
    server = EmbeddedPostgres.running(postgres_data_dir(data_dir)) if data_dir else None
    if server is None:
        where = (
            f"its data folder {data_dir} has no running server"
            if data_dir
            else f"there is no {DEFAULT_DATA_DIR} folder in {Path.cwd()} or its parents"
        )
        _fail(
            command,
            "DATABASE_URL is not set and no embedded PostgreSQL of `make run` is running "
            f"({where}): start `make run` in another terminal and run this from the same "
            "folder, or set DATABASE_URL=postgresql://…",
        )
    return server.url, True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _database_problem(exc: BaseException, url: str | None, embedded: bool) -> str:
    """One line saying what went wrong with the database, and what to do."""
    from sqlalchemy.exc import DBAPIError

    from shared.db import redacted_url

    try:
        shown = redacted_url(url) if url else "(DATABASE_URL)"
    except Exception:  # an unparsable URL: say so rather than echo what may be a secret
        shown = "(DATABASE_URL)"
    where = f"PostgreSQL at {shown}"
    # SQLAlchemy wraps the driver's error; asyncpg's own errors carry the SQLSTATE
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(exc, DBAPIError) or sqlstate:  # the server answered, and refused
        detail = _first_line(orig.__cause__ or orig)
        if sqlstate == "42P01":  # undefined_table
            return (
                f"the database {shown} has no Healthscore schema ({detail}): "
                "run `healthscore migrate` against it first"
            )
        return f"{where} refused: {detail}"
    hint = "is `make run` still running?" if embedded else "is it up, and DATABASE_URL right?"
    return f"cannot reach {where}: {_first_line(exc)} ({hint})"


@contextlib.contextmanager
def _database(command: str) -> Iterator[Callable[[], str]]:
    """Run a command's database work: yields a function giving the database URL
    (resolved on first use, see :func:`_database_url`); any database failure inside
    becomes one line on stderr and exit code 2, never a traceback."""
    import asyncpg  # type: ignore[import-untyped]  # no stubs published
    from sqlalchemy.exc import SQLAlchemyError

    resolved: str | None = None
    embedded = False

    def url() -> str:
        nonlocal resolved, embedded
        if resolved is None:
            resolved, embedded = _database_url(command)
        return resolved

    try:
        yield url
    except (
        SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    ) as exc:
        _fail(command, _database_problem(exc, resolved, embedded))


def _run_service(name: str, host: str | None, port: int | None) -> None:
    """Run one service; ``--host``/``--port`` win over HEALTHSCORE_<SERVICE>_HOST/_PORT."""
    from shared.migrate import NotMigrated

    try:
        settings: CommonSettings
        if name == "ingest":
            from services.ingest.app import run
            from services.ingest.settings import IngestSettings

            settings = IngestSettings()
        elif name == "scoring":
            from services.scoring.app import run
            from services.scoring.settings import ScoringSettings

            settings = ScoringSettings()
        else:
            from services.alerts.app import run
            from services.alerts.settings import AlertsSettings

            settings = AlertsSettings()
        default_host, default_port = settings.host, settings.port
        _exit(run(host or default_host, port or default_port))
    except NotMigrated as exc:
        typer.echo(f"healthscore {name}: {exc}", err=True)
        _exit(2)
    except (OSError, TimeoutError) as exc:  # database or broker unreachable at start
        typer.echo(
            f"healthscore {name}: cannot start: {exc!r} — is DATABASE_URL / "
            "KAFKA_BOOTSTRAP_SERVERS right and reachable?",
            err=True,
        )
        _exit(2)


HostOption = Annotated[
    str | None,
    typer.Option(
        help="Interface to listen on (default: HEALTHSCORE_<SERVICE>_HOST, else 0.0.0.0)."
    ),
]
PortOption = Annotated[
    int | None,
    typer.Option(help="Port (default: HEALTHSCORE_<SERVICE>_PORT, else 8000/8001/8002)."),
]


@app.command()
def ingest(host: HostOption = None, port: PortOption = None) -> None:
    """Run the ingest service (HTTP event API → Kafka)."""
    _run_service("ingest", host, port)


@app.command()
def scoring(host: HostOption = None, port: PortOption = None) -> None:
    """Run the scoring service (Kafka → windows, KPIs, scores; read API and dashboard)."""
    _run_service("scoring", host, port)


@app.command()
def alerts(host: HostOption = None, port: PortOption = None) -> None:
    """Run the alerts service (health snapshots → rules → signed webhooks)."""
    _run_service("alerts", host, port)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (idempotent)."""
    from shared.migrate import upgrade

    with _database("migrate") as database_url:
        upgrade(database_url())
    typer.echo("database schema is up to date")


@app.command()
def dev(
    ingest_port: int = 8000,
    scoring_port: int = 8001,
    alerts_port: int = 8002,
    host: HostOpt = "127.0.0.1",
    data_dir: Annotated[
        str, typer.Option(help="Where embedded PostgreSQL keeps its data.")
    ] = DEFAULT_DATA_DIR,
    demo: Annotated[bool, typer.Option(help="Also generate demo traffic.")] = False,
) -> None:
    """Run the whole stack on one machine: embedded PostgreSQL and broker (unless
    DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS are set) and the three services."""
    from services.dev import DevOptions, run_dev

    _exit(
        run_dev(
            DevOptions(
                host=host,
                ingest_port=ingest_port,
                scoring_port=scoring_port,
                alerts_port=alerts_port,
                data_dir=data_dir,
                demo=demo,
            )
        )
    )


@app.command()
def demo(
    ingest_url: Annotated[
        str, typer.Option(help="Base URL of the ingest service.")
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None,
        typer.Option(envvar="HEALTHSCORE_BOOTSTRAP_KEY", help="A key with the ingest scope."),
    ] = None,
    live: Annotated[
        bool, typer.Option(help="Keep sending current activity after the backfill.")
    ] = False,
    scale: Annotated[int, typer.Option(min=1, max=20, help="Multiply the number of accounts.")] = 1,
    scoring_url: Annotated[
        str | None,
        typer.Option(
            help="Scoring service: wait until it consumed the backfill, then rescore 90 days "
            "of history (needs DATABASE_URL)."
        ),
    ] = None,
) -> None:
    """Generate demo traffic: ~25 accounts with stories and 90 days of history."""
    from services.demo import run_demo

    if not key:
        typer.echo("a key is needed: --key or HEALTHSCORE_BOOTSTRAP_KEY", err=True)
        _exit(2)
    assert key is not None
    with contextlib.suppress(KeyboardInterrupt):
        run_demo(ingest_url, key, live=live, scale=scale, scoring_url=scoring_url)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what uses the key.")],
    scope: Annotated[list[str], typer.Option(help="ingest, read or admin; repeat for more.")],
    rate_limit: Annotated[
        float | None,
        typer.Option(
            help="Requests per second allowed for this key (ingest); unlimited when omitted."
        ),
    ] = None,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from shared import db
    from shared.auth import Scope, create_key

    bad = [s for s in scope if s not in {x.value for x in Scope}]
    if bad:
        typer.echo(f"unknown scope(s): {', '.join(bad)} (use ingest, read, admin)", err=True)
        _exit(2)

    async def go(url: str) -> tuple[str, str]:
        engine = db.create_engine(url, pool_size=1)
        try:
            return await create_key(engine, name, scope, rate_limit)
        finally:
            await engine.dispose()

    with _database("keys create") as database_url:
        key_id, raw = asyncio.run(go(database_url()))
    typer.echo(f"id:  {key_id}\nkey: {raw}\n(store it now: it is not shown again)")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never the keys themselves)."""
    from shared import db
    from shared.auth import list_keys

    async def go(url: str) -> list[dict[str, object]]:
        engine = db.create_engine(url, pool_size=1)
        try:
            return await list_keys(engine)
        finally:
            await engine.dispose()

    with _database("keys list") as database_url:
        keys = asyncio.run(go(database_url()))
    for k in keys:
        state = "revoked" if k["revoked_at"] else "active"
        scopes = ",".join(k["scopes"])  # type: ignore[arg-type]
        typer.echo(f"{k['id']}  {k['display_prefix']}…  {state:7}  {scopes:20}  {k['name']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (effective on every service within 10 seconds)."""
    from shared import db
    from shared.auth import revoke_key

    async def go(url: str) -> bool:
        engine = db.create_engine(url, pool_size=1)
        try:
            return await revoke_key(engine, key_id)
        finally:
            await engine.dispose()

    with _database("keys revoke") as database_url:
        revoked = asyncio.run(go(database_url()))
    if not revoked:
        typer.echo(f"no active key with id {key_id}", err=True)
        _exit(1)
    typer.echo(f"revoked {key_id}")


@app.command()
def rescore(
    days: Annotated[int, typer.Option(min=1, max=400, help="How many days back (incl. today).")],
) -> None:
    """Recompute the daily score history with the current score model (after a change)."""
    from services.scoring.rescore import rescore as run_rescore
    from services.scoring.score_model import ModelError, load_model
    from services.scoring.settings import ScoringSettings

    try:
        settings = ScoringSettings()
    except ValidationError as exc:
        _fail("rescore", _settings_problem(exc))
    try:
        model = load_model(settings.score_model)
    except ModelError as exc:
        typer.echo(str(exc), err=True)
        _exit(2)
    with _database("rescore") as database_url:
        settings = settings.model_copy(update={"database_url": database_url()})
        rows = asyncio.run(run_rescore(settings, days, model, settings.clock()))
    typer.echo(
        f"rescored {rows} account-days with model {model.version}; "
        "today's scores follow on the next sweep"
    )


# --- alerts: rules and deliveries ------------------------------------------------
rules_app = typer.Typer(help="Alert rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
deliveries_app = typer.Typer(help="Webhook deliveries.", no_args_is_help=True)
app.add_typer(deliveries_app, name="deliveries")


@rules_app.command("apply")
def rules_apply(file: Annotated[str, typer.Argument(help="A YAML file of rules.")]) -> None:
    """Create or update the rules in FILE, matched by id (rules not in FILE stay)."""
    from services.alerts.cli import apply_rules

    with _database("rules apply") as database_url:
        code = apply_rules(file, database_url)
    _exit(code)


@deliveries_app.command("replay")
def deliveries_replay(
    id: Annotated[str | None, typer.Option("--id", help="One delivery (webhook-id).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Every failed delivery created since this ISO time.")
    ] = None,
) -> None:
    """Send failed deliveries again (same webhook-id); a running alerts service sends them."""
    from services.alerts.cli import replay_deliveries

    with _database("deliveries replay") as database_url:
        code = replay_deliveries(id, since, database_url)
    _exit(code)


def main() -> None:
    app(prog_name="healthscore")


if __name__ == "__main__":
    sys.exit(main())  # type: ignore[func-returns-value]
