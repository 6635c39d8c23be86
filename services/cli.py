"""The ``healthscore`` command: run the stack or one service, migrate, manage keys."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Annotated

import typer

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

    settings = CommonSettings()
    upgrade(settings.database_url)
    typer.echo("database schema is up to date")


@app.command()
def dev(
    ingest_port: int = 8000,
    scoring_port: int = 8001,
    alerts_port: int = 8002,
    host: HostOpt = "127.0.0.1",
    data_dir: Annotated[
        str, typer.Option(help="Where embedded PostgreSQL keeps its data.")
    ] = ".healthscore",
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

    async def go() -> tuple[str, str]:
        engine = db.create_engine(CommonSettings().database_url, pool_size=1)
        try:
            return await create_key(engine, name, scope, rate_limit)
        finally:
            await engine.dispose()

    key_id, raw = asyncio.run(go())
    typer.echo(f"id:  {key_id}\nkey: {raw}\n(store it now: it is not shown again)")


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never the keys themselves)."""
    from shared import db
    from shared.auth import list_keys

    async def go() -> list[dict[str, object]]:
        engine = db.create_engine(CommonSettings().database_url, pool_size=1)
        try:
            return await list_keys(engine)
        finally:
            await engine.dispose()

    for k in asyncio.run(go()):
        state = "revoked" if k["revoked_at"] else "active"
        scopes = ",".join(k["scopes"])  # type: ignore[arg-type]
        typer.echo(f"{k['id']}  {k['display_prefix']}…  {state:7}  {scopes:20}  {k['name']}")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key (effective on every service within 10 seconds)."""
    from shared import db
    from shared.auth import revoke_key

    async def go() -> bool:
        engine = db.create_engine(CommonSettings().database_url, pool_size=1)
        try:
            return await revoke_key(engine, key_id)
        finally:
            await engine.dispose()

    if not asyncio.run(go()):
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

    settings = ScoringSettings()
    try:
        model = load_model(settings.score_model)
    except ModelError as exc:
        typer.echo(str(exc), err=True)
        _exit(2)
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

    _exit(apply_rules(file))


@deliveries_app.command("replay")
def deliveries_replay(
    id: Annotated[str | None, typer.Option("--id", help="One delivery (webhook-id).")] = None,
    since: Annotated[
        str | None, typer.Option(help="Every failed delivery created since this ISO time.")
    ] = None,
) -> None:
    """Send failed deliveries again (same webhook-id); a running alerts service sends them."""
    from services.alerts.cli import replay_deliveries

    _exit(replay_deliveries(id, since))


def main() -> None:
    app(prog_name="healthscore")


if __name__ == "__main__":
    sys.exit(main())  # type: ignore[func-returns-value]
