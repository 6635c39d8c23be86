"""The whole path with the three services as separate processes: an event posted
to ingest is published to Kafka, consumed by scoring and stored in Postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.infra import BOOTSTRAP_KEY, ServiceProcess, running

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    services = {n: ServiceProcess(n, env) for n in ("ingest", "scoring", "alerts")}
    with running(*services.values()):
        yield services


@pytest.mark.parametrize("name", ["ingest", "scoring", "alerts"])
def test_every_service_serves_probes_and_metrics(
    stack: dict[str, ServiceProcess], name: str
) -> None:
    base = stack[name].url
    assert httpx.get(f"{base}/healthz").json()["status"] == "ok"
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] and ready.json()["checks"]["broker"]
    metrics = httpx.get(f"{base}/metrics").text
    assert "healthscore_http_request_duration_seconds_bucket" in metrics
    assert f'service="{name}"' in metrics


async def test_event_goes_through_to_a_score(stack: dict[str, ServiceProcess]) -> None:
    body = {
        "events": [
            {"id": "skeleton-1", "type": "login", "account_id": "acme", "user_id": "u1"},
            {
                "id": "skeleton-2",
                "type": "communication",
                "account_id": "acme",
                "channel": "email",
                "direction": "inbound",
                "contact_id": "c1",
            },
        ]
    }
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{stack['ingest'].url}/v1/events", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 2}
        health = None
        for _ in range(150):
            got = await client.get(f"{stack['scoring'].url}/v1/accounts/acme/health", headers=AUTH)
            if got.status_code == 200 and got.json()["kpis"]["touchpoints_30d"] == 1:
                health = got.json()
                break
            await asyncio.sleep(0.1)
    assert health is not None, "the events never reached a score"
    assert health["kpis"]["dau"] == 1
    assert health["kpis"]["active_stakeholders"] == 1
    assert health["kpis"]["days_since_last_inbound"] == 0


def test_ingest_requires_a_key(stack: dict[str, ServiceProcess]) -> None:
    url = f"{stack['ingest'].url}/v1/events"
    body = {"events": [{"type": "login", "account_id": "a", "user_id": "u"}]}
    assert httpx.post(url, json=body).status_code == 401
    assert (
        httpx.post(url, json=body, headers={"Authorization": "Bearer hs_nope"}).status_code == 401
    )


def test_service_refuses_an_unmigrated_database(infra: object, env: dict[str, str]) -> None:
    from tests.infra import Infra

    assert isinstance(infra, Infra)
    bad = env | {"DATABASE_URL": infra.db_url("postgres")}
    svc = ServiceProcess("alerts", bad)
    with pytest.raises(RuntimeError, match="healthscore migrate"):
        svc.start(timeout=30)
    svc.stop()


def test_port_and_host_come_from_the_environment_without_flags(env: dict[str, str]) -> None:
    import os
    import subprocess
    import sys
    import time

    from shared.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "alerts"],
        env=os.environ
        | env
        | {"HEALTHSCORE_ALERTS_PORT": str(port), "HEALTHSCORE_ALERTS_HOST": "127.0.0.1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        status = None
        for _ in range(300):
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(20)


def test_unreachable_database_is_a_clear_error(env: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    bad = env | {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nope"}
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "ingest", "--port", "0"],
        env=os.environ | bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "DATABASE_URL" in out.stderr
    assert "Traceback" not in out.stderr
