"""Property-based fuzzing of every ingest route: no input makes the service answer
5xx (the broker and database are up), and every answer is JSON with one of the
documented statuses.

Hypothesis drives a synchronous test; the app (with its producer and database
pool) runs on its own event loop in a background thread, as in a real process.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.events import EVENT_TYPES
from tests.ingest_helpers import AUTH, ingest_client, settings_from

ROUTES = ["events", "batch", "import", "track", "identify", "group", "page", "screen", "alias"]
EXPECTED = {200, 202, 400, 401, 413, 415, 422}


class AppThread:
    """The ingest app on a loop in a background thread; ``post`` is synchronous."""

    def __init__(self, env: dict[str, str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.settings = settings_from(env)
        self.ready: Future[None] = Future()
        self.stop = asyncio.Event()
        self.client: httpx.AsyncClient | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _main(self) -> None:
        ctx: AbstractAsyncContextManager[Any] = ingest_client(self.settings)
        async with ctx as (_app, client):
            self.client = client
            self.ready.set_result(None)
            await self.stop.wait()

    def __enter__(self) -> AppThread:
        self.thread.start()
        self.main = asyncio.run_coroutine_threadsafe(self._main(), self.loop)
        self.ready.result(timeout=60)
        return self

    def post(self, path: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        assert self.client is not None
        return asyncio.run_coroutine_threadsafe(
            self.client.post(path, content=content, headers=headers), self.loop
        ).result(timeout=60)

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.main.result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def app(env: dict[str, str]) -> Iterator[AppThread]:
    with AppThread(env) as a:
        yield a


NOW = datetime.now(UTC)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=12,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            NOW.isoformat(),
            (NOW - timedelta(days=3)).isoformat(),
            "9999-12-31T23:59:59+00:00",
            "0001-01-01T00:00:00+14:00",
            "2026-01-01",
            "",
        ]
    ),
    json_values,
)
FIELDS = [
    "id",
    "user_id",
    "feature",
    "count",
    "duration_seconds",
    "name",
    "seats_purchased",
    "lifecycle_stage",
    "plan",
    "arr",
    "renewal_date",
    "csm",
    "channel",
    "direction",
    "contact_id",
    "sentiment",
    "escalation",
    "subject",
    "role",
    "email",
    "left_company",
    "survey",
    "score",
    "comment",
    "onboarding_completed_at",
]
native_events = st.fixed_dictionaries(
    {"type": st.sampled_from([*EVENT_TYPES, "nope"]), "account_id": st.text(max_size=130)},
    optional={
        "timestamp": timestamps,
        "sent_at": timestamps,
        **{f: json_values | st.text(max_size=5) | st.integers(-2, 12) for f in FIELDS},
    },
)
segment_items = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "group", "page", "screen", "alias", "x"]),
        "userId": json_scalars,
        "anonymousId": json_scalars,
        "groupId": json_scalars,
        "event": st.sampled_from(["Logged In", "Report", ""]) | json_scalars,
        "messageId": json_scalars,
        "timestamp": timestamps,
        "sentAt": timestamps,
        "properties": st.dictionaries(
            st.sampled_from(["account_id", "duration_seconds", "count", "x"]), json_values
        )
        | json_values,
        "traits": st.dictionaries(
            st.sampled_from(["account_id", "seats", "plan", "company", "name", "arr"]),
            json_values,
        )
        | json_values,
        "context": st.dictionaries(st.sampled_from(["groupId", "traits"]), json_values)
        | json_values,
    },
)
bodies = st.one_of(
    st.builds(lambda evs: {"events": evs}, st.lists(native_events | json_values, max_size=6)),
    st.builds(
        lambda items, ctx, sent: {"batch": items, "context": ctx, "sentAt": sent},
        st.lists(segment_items | json_values, max_size=6),
        json_values,
        timestamps,
    ),
    segment_items,
    json_values,
)
raw_bodies = st.one_of(
    bodies.map(orjson.dumps),
    st.binary(max_size=200),
    bodies.map(lambda b: gzip.compress(orjson.dumps(b))),
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", "text/csv", ""]
        ),
        "Content-Encoding": st.sampled_from(["gzip", "identity", "br", ""]),
        "Authorization": st.sampled_from(
            [AUTH["Authorization"], "Bearer hs_nope", "Basic !!!", "Basic Og==", "Digest x"]
        ),
        "X-Strict-Mode": st.sampled_from(["1", "0"]),
    },
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(route=st.sampled_from(ROUTES), body=raw_bodies, headers=header_sets)
def test_no_input_makes_any_route_fail_with_5xx(
    app: AppThread, route: str, body: bytes, headers: dict[str, str]
) -> None:
    r = app.post(f"/v1/{route}", body, headers)
    assert r.status_code in EXPECTED, (r.status_code, r.text)
    r.json()  # every answer is JSON


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(route=st.sampled_from(ROUTES), body=bodies)
def test_well_formed_json_with_a_valid_key_is_never_5xx(
    app: AppThread, route: str, body: Any
) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    r = app.post(f"/v1/{route}", orjson.dumps(body), headers)
    assert r.status_code in EXPECTED, (r.status_code, r.text)
    if route == "events" and r.status_code == 422:
        assert all(set(e) == {"index", "field", "message"} for e in r.json()["errors"])
