"""Prometheus helpers shared by every service (prefix ``healthscore_``, base units,
bounded labels: never an account or user id)."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

# Fine enough around the 0.1–1 s targets to read p99 against 500 ms.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

HTTP_REQUEST_DURATION = Histogram(
    "healthscore_http_request_duration_seconds",
    "HTTP request duration by route template and status.",
    ["service", "route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)


def observe_many(histogram: Histogram, amount: float, count: int) -> None:
    """``histogram.observe(amount)`` ``count`` times, in one step (the scoring
    consumer observes one event→score latency per event; events of one request
    share their receive time). Uses the client's internals: a unit test pins it to
    what repeated ``observe`` exposes."""
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    histogram._sum.inc(amount * count)
    for i, bound in enumerate(histogram._upper_bounds):
        if amount <= bound:
            histogram._buckets[i].inc(count)
            break


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


class HttpMetricsMiddleware:
    """Times every request; labels by the route *template* (bounded cardinality)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:  # type: ignore[type-arg]
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)  # type: ignore[arg-type]
        finally:
            HTTP_REQUEST_DURATION.labels(
                self.service, _route_template(scope), scope["method"], str(status)
            ).observe(time.perf_counter() - start)


UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route template can be named for."""


def _route_template(scope: Scope) -> str:
    """The template of the route that took the request (``/v1/accounts/{account_id}``),
    never the raw path. A request answered before routing (a 400 for a NUL in the URL,
    say) has no route in its scope: the app's routes are matched against it then. A
    route object without a ``path`` — FastAPI (0.165) keeps an included router as one
    ``_IncludedRouter`` entry that matches the paths of all its routes — gives
    :data:`UNMATCHED_ROUTE`, as a path that no route matches does."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return _label(path)
    app = scope.get("app")
    for r in getattr(getattr(app, "router", None), "routes", []):
        match, _ = r.matches(scope)
        if match is Match.FULL:
            path = getattr(r, "path", None)
            return _label(path) if isinstance(path, str) else UNMATCHED_ROUTE
    return UNMATCHED_ROUTE


_CONVERTOR = re.compile(r"\{(\w+):\w+\}")


@functools.lru_cache(maxsize=256)  # one entry per route template: bounded
def _label(template: str) -> str:
    """A route template as its label, without Starlette's convertors: the account
    routes take ``{account_id:path}`` (ids may hold "/"), and their label stays
    ``/v1/accounts/{account_id}/health``, as the OpenAPI document names them."""
    return _CONVERTOR.sub(r"{\1}", template)


Handler = Callable[[Request], Awaitable[Response]]
