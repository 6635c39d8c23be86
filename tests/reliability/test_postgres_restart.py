"""PostgreSQL restarted in the middle of a stream: ingest keeps accepting (it needs
only the broker), scoring resumes once the database is back, and every accepted
event counts exactly once (the oracle: N distinct communications → touchpoints_30d
== N). Runs on a private PostgreSQL so the rest of the suite is not disturbed."""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedPostgres
from shared.migrate import upgrade
from tests.infra import BOOTSTRAP_KEY, Infra, ServiceProcess, service_env

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
N = 600


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="hs-pgrestart-", dir="/tmp")) / "pgdata", fast=True
    ).start()
    try:
        yield pg
    finally:
        pg.stop()


def _events(start: int, count: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"pgr-{i}",
            "type": "communication",
            "account_id": "pg-restart",
            "channel": "email",
            "direction": "inbound",
            "contact_id": f"c{i % 5}",
        }
        for i in range(start, start + count)
    ]


def _touchpoints(url: str) -> int | None:
    try:
        r = httpx.get(f"{url}/v1/accounts/pg-restart/health", headers=AUTH, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json()["kpis"]["touchpoints_30d"] if r.status_code == 200 else None


def test_scoring_resumes_after_a_postgres_restart_and_counts_once(
    infra: Infra, private_pg: EmbeddedPostgres
) -> None:
    asyncio.run(asyncio.to_thread(upgrade, private_pg.url))
    env = service_env(infra, private_pg.url, "pgr" + secrets.token_hex(3))
    ingest, scoring = ServiceProcess("ingest", env).start(), ServiceProcess("scoring", env).start()
    restarts_by_supervisor = 0
    try:
        sent = 0
        with httpx.Client(timeout=30, headers=AUTH) as client:
            for batch in range(6):
                if batch == 3:  # mid-stream: the database goes away and comes back
                    private_pg.stop()
                    time.sleep(2)
                    private_pg.start()
                r = client.post(f"{ingest.url}/v1/events", json={"events": _events(sent, N // 6)})
                assert r.status_code == 202, r.text  # ingest does not need the database
                sent += N // 6
                time.sleep(0.5)
        deadline = time.monotonic() + 120
        seen = None
        while time.monotonic() < deadline:
            if scoring.proc is not None and scoring.proc.poll() is not None:
                # the process gave up on the database: a supervisor restarts it
                restarts_by_supervisor += 1
                scoring = ServiceProcess("scoring", env).start()
            seen = _touchpoints(scoring.url)
            if seen == sent:
                break
            time.sleep(0.5)
        assert seen == sent, f"touchpoints {seen}, sent {sent}"
        time.sleep(2)  # nothing arrives late to double count
        assert _touchpoints(scoring.url) == sent
        assert restarts_by_supervisor <= 1
    finally:
        scoring.stop()
        ingest.stop()
