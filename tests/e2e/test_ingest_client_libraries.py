"""The real Segment and RudderStack Python libraries, pointed at an ingest process,
deliver track/identify/group/page calls that land mapped on the right topics."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from services.ingest.settings import IngestSettings
from shared import db
from shared.auth import create_key
from tests.infra import ServiceProcess
from tests.ingest_helpers import read_topic, settings_from

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def ingest(env: dict[str, str]) -> Iterator[ServiceProcess]:
    proc = ServiceProcess("ingest", env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def settings(env: dict[str, str]) -> IngestSettings:
    return settings_from(env)


async def ingest_key(database_url: str) -> str:
    engine = db.create_engine(database_url)
    try:
        _id, raw = await create_key(engine, "library", ["ingest"])
    finally:
        await engine.dispose()
    return raw


def drive(client: Any, prefix: str) -> None:
    """The same calls an app would make, through the library's queue and flush."""
    account, u1, u2 = f"{prefix}-acme", f"{prefix}-u1", f"{prefix}-u2"
    client.group(user_id=u1, group_id=account, traits={"name": "Acme", "plan": "pro", "seats": 25})
    client.identify(user_id=u2, traits={"email": "b@acme.test", "account_id": account})
    client.track(user_id=u1, event="Report Exported", properties={"format": "pdf"})
    client.track(user_id=u2, event="Logged In")
    client.track(user_id=u1, event="Call", properties={"duration_seconds": 90})
    client.page(user_id=u1, name="Dashboard")
    client.flush()


async def published(settings: IngestSettings, prefix: str, n: int) -> list[dict[str, Any]]:
    out = []
    for topic in settings.topics.events:
        msgs = await read_topic(settings.kafka_bootstrap_servers, topic, idle=0.5)
        out += [m | {"_topic": topic} for m in msgs if m["account_id"].startswith(prefix)]
    assert len(out) == n, out
    return out


def check(events: list[dict[str, Any]], settings: IngestSettings, prefix: str) -> None:
    account = f"{prefix}-acme"
    assert {m["account_id"] for m in events} == {account}
    assert {m["_key"] for m in events} == {account}
    assert {m["_topic"] for m in events} == {settings.topics.product}
    summary = sorted(
        (m["type"], m.get("user_id"), m.get("feature") or m.get("plan") or "") for m in events
    )
    assert summary == [
        ("account_updated", None, "pro"),
        ("feature_used", f"{prefix}-u1", "Report Exported"),
        ("login", f"{prefix}-u1", ""),  # page
        ("login", f"{prefix}-u2", ""),  # "Logged In", account via identify
        ("session", f"{prefix}-u1", ""),
    ]
    updated = next(m for m in events if m["type"] == "account_updated")
    assert (updated["name"], updated["seats_purchased"]) == ("Acme", 25)
    session = next(m for m in events if m["type"] == "session")
    assert session["duration_seconds"] == 90
    # messageId became the id: the library's UUIDs, all distinct
    assert len({m["id"] for m in events}) == 5


async def test_segment_analytics_python(
    ingest: ServiceProcess, settings: IngestSettings, database_url: str
) -> None:
    errors: list[Any] = []
    client = SegmentClient(
        write_key=await ingest_key(database_url),
        host=ingest.url,
        on_error=lambda e, batch: errors.append(e),
        max_retries=1,
    )
    await asyncio.to_thread(drive, client, "libseg")
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    check(await published(settings, "libseg-", 5), settings, "libseg")


async def test_rudder_sdk_python_gzip(
    ingest: ServiceProcess, settings: IngestSettings, database_url: str
) -> None:
    errors: list[Any] = []
    client = RudderClient(
        write_key=await ingest_key(database_url),
        host=ingest.url,
        on_error=lambda e, batch: errors.append(e),
        max_retries=1,
        gzip=True,
    )
    await asyncio.to_thread(drive, client, "librud")
    await asyncio.to_thread(client.shutdown)
    assert errors == []
    check(await published(settings, "librud-", 5), settings, "librud")
