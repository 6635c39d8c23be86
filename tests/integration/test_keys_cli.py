"""``healthscore keys …`` (and the other database commands) as a user runs them next
to ``make run``: with no DATABASE_URL they use the embedded PostgreSQL that
``healthscore dev`` runs on ``.healthscore/pgdata`` (found from the checkout or a
subfolder of it); when none runs, or the database is wrong, they say so in one line
and exit non-zero, never with a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from shared.embedded import DEFAULT_DATA_DIR, EmbeddedPostgres, free_port, postgres_data_dir
from shared.migrate import upgrade
from tests.infra import ROOT, Infra, ServiceProcess, drop_database, service_env


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``healthscore ARGS`` run from ``cwd``, DATABASE_URL unset unless ``env`` sets it."""
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # the installed command, as a user runs it (``python -m`` would put cwd on sys.path)
    script = Path(sys.executable).with_name("healthscore")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    return subprocess.run(
        [*command, *args],
        env=base | (env or {}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_failure(r: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for phrase in phrases:
        assert phrase in r.stderr, r.stderr


def temp_folder() -> Path:
    # Not under tmp_path: as root the data folder must be reachable by the postgres
    # system user, and pytest's tmp folders are private to root.
    return Path(tempfile.mkdtemp(prefix="hs-keys-", dir="/tmp"))


@pytest.fixture(scope="module")
def checkout() -> Iterator[tuple[Path, EmbeddedPostgres]]:
    """A folder as ``make run`` leaves it while it runs: the embedded PostgreSQL up on
    ``.healthscore/pgdata`` at a random port, migrated."""
    root = temp_folder()
    pg = EmbeddedPostgres(postgres_data_dir(root / DEFAULT_DATA_DIR), fast=True).start()
    try:
        upgrade(pg.url)
        yield root, pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_keys_use_the_embedded_postgres_of_make_run_without_database_url(
    checkout: tuple[Path, EmbeddedPostgres],
) -> None:
    root, pg = checkout
    r = cli(root, "keys", "create", "--name", "laptop ingest", "--scope", "ingest")
    assert r.returncode == 0, r.stderr
    key_id = r.stdout.split("id:")[1].split()[0]
    raw = r.stdout.split("key:")[1].split()[0]
    subfolder = root / "docs" / "guide"
    subfolder.mkdir(parents=True)
    r = cli(subfolder, "keys", "list")  # from a subfolder of the checkout too
    assert r.returncode == 0, r.stderr
    assert key_id in r.stdout and "laptop ingest" in r.stdout and "active" in r.stdout
    assert raw not in r.stdout
    conn = await asyncpg.connect(pg.url)  # the key is in make run's database
    try:
        names = await conn.fetchval("SELECT array_agg(name) FROM api_keys")
    finally:
        await conn.close()
    assert names == ["laptop ingest"]
    r = cli(root, "keys", "revoke", key_id)
    assert r.returncode == 0 and f"revoked {key_id}" in r.stdout, r.stderr
    assert "revoked" in cli(root, "keys", "list").stdout


def test_migrate_and_rules_apply_use_it_too(checkout: tuple[Path, EmbeddedPostgres]) -> None:
    root, _ = checkout
    r = cli(root, "migrate")
    assert r.returncode == 0 and "up to date" in r.stdout, r.stderr
    rules = ROOT / "services" / "alerts" / "default_rules.yaml"
    r = cli(root, "rules", "apply", str(rules))
    assert r.returncode == 0 and "9 rules applied" in r.stdout, r.stderr


@pytest.mark.parametrize("layout", ["no-data-folder", "stopped", "killed"])
def test_without_a_running_make_run_it_says_so_and_how_to_fix_it(layout: str) -> None:
    folder = temp_folder()
    try:
        pgdata = postgres_data_dir(folder / DEFAULT_DATA_DIR)
        if layout != "no-data-folder":
            pgdata.mkdir(parents=True)
        if layout == "killed":  # postmaster.pid of a server that no longer exists
            gone = subprocess.Popen(["true"])
            gone.wait()
            (pgdata / "postmaster.pid").write_text(f"{gone.pid}\n{pgdata}\n0\n{free_port()}\n")
        for args in (("keys", "list"), ("keys", "create", "--name", "x", "--scope", "read")):
            r = cli(folder, *args)
            assert_one_line_failure(r, "DATABASE_URL is not set", "`make run`")
            assert r.stdout == ""
            if layout != "no-data-folder":
                assert f"{folder / DEFAULT_DATA_DIR} has no running server" in r.stderr
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("problem", ["not-migrated", "nothing-listening", "not-postgres"])
async def test_database_problems_are_one_line_not_a_traceback(
    infra: Infra, checkout: tuple[Path, EmbeddedPostgres], problem: str
) -> None:
    root, _ = checkout  # DATABASE_URL wins over the embedded server found here
    if problem == "not-migrated":
        url = infra.db_url("hs_keys_empty")
        conn = await asyncpg.connect(infra.admin_url)
        try:
            await conn.execute('DROP DATABASE IF EXISTS "hs_keys_empty" WITH (FORCE)')
            await conn.execute('CREATE DATABASE "hs_keys_empty"')
        finally:
            await conn.close()
        expected: tuple[str, ...] = ("no Healthscore schema", "healthscore migrate")
    elif problem == "nothing-listening":
        url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
        expected = ("cannot reach PostgreSQL at", url)
    else:
        url = "mysql://root@127.0.0.1/db"
        expected = ("invalid setting", "DATABASE_URL must be a postgresql:// URL")
    try:
        r = cli(root, "keys", "list", env={"DATABASE_URL": url})
        assert_one_line_failure(r, "healthscore keys list: ", *expected)
    finally:
        if problem == "not-migrated":
            await drop_database(infra, url)


def test_a_created_key_works_on_the_services(
    checkout: tuple[Path, EmbeddedPostgres], infra: Infra
) -> None:
    """The point of `keys create`: the key it prints authenticates on a service that
    runs on the same database (here one alerts process, as `make run` starts it)."""
    root, pg = checkout
    r = cli(root, "keys", "create", "--name", "ops", "--scope", "admin")
    assert r.returncode == 0, r.stderr
    raw = r.stdout.split("key:")[1].split()[0]
    env = service_env(infra, pg.url, "tkeys") | {"HEALTHSCORE_LOAD_DEFAULT_RULES": "false"}
    alerts = ServiceProcess("alerts", env).start()
    try:
        ok = httpx.get(f"{alerts.url}/v1/rules", headers={"Authorization": f"Bearer {raw}"})
        wrong = httpx.get(f"{alerts.url}/v1/rules", headers={"Authorization": "Bearer hs_nope"})
    finally:
        alerts.stop()
    assert (ok.status_code, wrong.status_code) == (200, 401)
