"""PostgreSQL stopped and started in the middle of a stream, under the whole
pipeline (ingest, scoring and alerts as processes): ingest keeps accepting (it
needs only the broker); scoring and alerts resume once the database is back —
by themselves, or after exiting non-zero for their supervisor (this test plays
the supervisor and restarts a process that exited); every accepted event counts
exactly once (the KPIs equal the independent oracle) and every expected alert
reaches the subscription once. Runs on a private PostgreSQL so the rest of the
suite is not disturbed."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.embedded import EmbeddedPostgres
from shared.migrate import upgrade
from tests.infra import Infra, ServiceProcess, service_env
from tests.reliability.pipeline import (
    Client,
    pipeline_env,
    plan,
    record_figures,
    subscribe,
    until,
    wait_for_oracle,
    wait_for_webhooks,
)
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.timeout(300)

ACCOUNTS = [f"pgr-{i}" for i in range(6)]
DETRACTORS = set(ACCOUNTS[:2])
BATCH = 30


@pytest.fixture(scope="module")
def private_pg() -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="hs-pgrestart-", dir="/tmp")) / "pgdata", fast=True
    ).start()
    try:
        yield pg
    finally:
        pg.stop()


async def test_the_pipeline_resumes_after_a_postgres_restart_and_counts_once(
    infra: Infra, private_pg: EmbeddedPostgres, receiver: Receiver
) -> None:
    await asyncio.to_thread(upgrade, private_pg.url)
    env = pipeline_env(service_env(infra, private_pg.url, "pgr" + secrets.token_hex(3)))
    procs = {n: ServiceProcess(n, env) for n in ("ingest", "scoring", "alerts")}
    for p in procs.values():
        await asyncio.to_thread(p.start)
    restarts: dict[str, int] = dict.fromkeys(procs, 0)
    supervising = True

    async def supervise() -> None:
        """What a supervisor (systemd, Kubernetes) does: restart a process that
        exited, again and again while it cannot start (the database still down)."""
        while supervising:
            for name, p in procs.items():
                if p.proc is not None and p.proc.poll() is not None:
                    restarts[name] += 1
                    procs[name] = ServiceProcess(name, env)
                    # refused to start (database still down): tried again next round
                    with contextlib.suppress(RuntimeError):
                        await asyncio.to_thread(procs[name].start)
            await asyncio.sleep(0.5)

    supervisor = asyncio.create_task(supervise())
    try:
        await subscribe(procs["alerts"].url, f"{receiver.url}/pg")
        events = plan(ACCOUNTS, DETRACTORS, per_account=60, seed=11, prefix="pgr")
        batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
        client = Client(lambda: procs["ingest"].url)
        deadline = time.monotonic() + 120

        async def send_all() -> None:
            async with httpx.AsyncClient(timeout=15) as http:
                for batch in batches:
                    await client.post(http, batch, deadline)
                    await asyncio.sleep(0.15)

        async def outage() -> None:
            """Mid-stream, the database goes away for 3 s while events keep coming."""
            await until(lambda: client.batches_done >= len(batches) // 3, 60)
            await asyncio.to_thread(private_pg.stop)
            await asyncio.sleep(3)
            await asyncio.to_thread(private_pg.start)

        await asyncio.gather(send_all(), outage())
        # ingest never needed the database: no request failed, none was resent
        assert client.resent_events == 0, dict(client.statuses)
        accepted = list(client.accepted.values())
        diff = await wait_for_oracle(lambda: procs["scoring"].url, accepted, ACCOUNTS, 120)
        assert diff == {}, diff
        tally = await wait_for_webhooks(receiver, len(DETRACTORS), 60)
        record_figures(
            "postgres_restart",
            {
                "events_sent": len(accepted),
                "accounts_matching_oracle": len(ACCOUNTS) - len(diff),
                "accounts": len(ACCOUNTS),
                "alerts_expected": len(DETRACTORS),
                "alerts_delivered": tally.delivered(),
                "restarts_by_supervisor": restarts,
            },
        )
        assert tally.accounts["/pg"] == DETRACTORS
        assert set(tally.alerts["/pg"].values()) == {1}, tally.alerts
        assert await wait_for_oracle(lambda: procs["scoring"].url, accepted, ACCOUNTS, 0) == {}
    finally:
        supervising = False
        await supervisor
        for p in procs.values():
            p.stop()
