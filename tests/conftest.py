"""Session-wide real infrastructure and per-module isolation (see tests/infra.py)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.embedded import TansuBroker
from tests.infra import Infra, drop_database, new_database, service_env, start_infra, stop_infra


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    inf = start_infra()
    try:
        yield inf
    finally:
        stop_infra(inf)


@pytest.fixture(scope="module")
async def database_url(infra: Infra, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh migrated database for this test module only."""
    url = await new_database(infra, request.module.__name__.rpartition(".")[2])
    yield url
    await drop_database(infra, url)


@pytest.fixture(scope="module")
def topic_prefix() -> str:
    """Topic names of this test module only."""
    return "t" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def env(infra: Infra, database_url: str, topic_prefix: str) -> dict[str, str]:
    """Environment for settings objects and service processes of this module."""
    return service_env(infra, database_url, topic_prefix)


@pytest.fixture
def monkeyenv(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    """Apply this module's environment to os.environ (for settings classes)."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[TansuBroker]:
    """A tansu broker of this test only, which it may stop and start again (same port)."""
    b = TansuBroker(log_path=tmp_path / "broker.log").start()
    try:
        yield b
    finally:
        b.stop()
