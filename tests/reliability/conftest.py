"""Fixtures of the reliability suite (the session's infrastructure is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.webhook_receiver import Receiver


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A real local webhook receiver, answering 200."""
    r = await Receiver().start()
    yield r
    await r.stop()
