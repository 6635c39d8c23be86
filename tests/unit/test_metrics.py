"""shared.metrics: observe_many exposes exactly what repeated observe() does; the
HTTP metrics label every request by a bounded route label, whatever answered it."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry, Histogram, generate_latest

from shared.metrics import LATENCY_BUCKETS, UNMATCHED_ROUTE, observe_many


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    a, b = CollectorRegistry(), CollectorRegistry()
    ha = Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=a)
    hb = Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=b)
    return a, ha, b, hb


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100, allow_nan=False)
            | st.sampled_from(LATENCY_BUCKETS),  # on a bucket's bound: that bucket
            st.integers(min_value=1, max_value=50),
        ),
        max_size=20,
    )
)
def test_observe_many_equals_repeated_observe(observations: list[tuple[float, int]]) -> None:
    a, one_by_one, b, many = _pair()
    for amount, count in observations:
        for _ in range(count):
            one_by_one.observe(amount)
        observe_many(many, amount, count)
    got = generate_latest(b).decode().splitlines()
    want = generate_latest(a).decode().splitlines()
    # _sum may differ in the last float digits (one product vs repeated additions)
    assert [x for x in got if "_sum" not in x and "_created" not in x] == [
        x for x in want if "_sum" not in x and "_created" not in x
    ]
    sum_got = sum(float(x.split()[-1]) for x in got if x.startswith("t_seconds_sum"))
    sum_want = sum(float(x.split()[-1]) for x in want if x.startswith("t_seconds_sum"))
    assert abs(sum_got - sum_want) <= 1e-9 * max(1.0, sum_want)


def _scoring_app() -> FastAPI:
    from services.scoring.app import create_app
    from services.scoring.settings import ScoringSettings

    return create_app(ScoringSettings())


def _alerts_app() -> FastAPI:
    from services.alerts.app import create_app
    from services.alerts.settings import AlertsSettings

    return create_app(AlertsSettings())


def _requests(service: str, route: str, status: int) -> float:
    return (
        REGISTRY.get_sample_value(
            "healthscore_http_request_duration_seconds_count",
            {"service": service, "route": route, "method": "GET", "status": str(status)},
        )
        or 0.0
    )


@pytest.mark.parametrize(
    ("service", "make_app", "url", "status", "route"),
    [
        # refused before routing; an included router (no path of its own) matches them
        pytest.param(
            "scoring",
            _scoring_app,
            "/v1/accounts/%00/health",
            400,
            UNMATCHED_ROUTE,
            id="scoring-nul-in-path",
        ),
        pytest.param(
            "scoring",
            _scoring_app,
            "/v1/accounts?x=%00",
            400,
            UNMATCHED_ROUTE,
            id="scoring-nul-in-query",
        ),
        pytest.param(
            "alerts", _alerts_app, "/v1/rules?x=%00", 400, UNMATCHED_ROUTE, id="alerts-nul"
        ),
        pytest.param(
            "alerts", _alerts_app, "/v1/no-such-thing", 404, UNMATCHED_ROUTE, id="no-such-route"
        ),
        # refused before routing too, but a plain route matches: named by its template
        pytest.param("alerts", _alerts_app, "/healthz?x=%00", 400, "/healthz", id="plain-route"),
    ],
)
async def test_requests_answered_before_routing_are_counted_under_a_bounded_route(
    service: str,
    make_app: Callable[[], FastAPI],
    url: str,
    status: int,
    route: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The services' real apps, in-process (no lifespan: these requests never reach a
    handler). Before the fix the route lookup raised AttributeError on FastAPI's
    included router: logged at error level and the request missing from the metric."""
    app = make_app()
    before = _requests(service, route, status)
    transport = httpx.ASGITransport(app=app)
    with caplog.at_level(logging.WARNING):
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            r = await client.get(url)
    assert r.status_code == status, r.text
    assert [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR] == []
    assert _requests(service, route, status) - before == 1


@pytest.mark.parametrize(
    ("template", "label"),
    [
        ("/v1/accounts/{account_id:path}/health", "/v1/accounts/{account_id}/health"),
        ("/accounts/{account_id:path}", "/accounts/{account_id}"),
        ("/v1/rules/{rule_id}", "/v1/rules/{rule_id}"),
        ("/healthz", "/healthz"),
    ],
)
def test_route_label_is_the_template_without_convertors(template: str, label: str) -> None:
    """Account ids may hold "/", so their routes take ``{account_id:path}``; the label
    stays the template the OpenAPI document shows (and dashboards already query)."""
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from shared.metrics import _route_template

    route = Route(template, lambda request: PlainTextResponse(""))
    assert _route_template({"type": "http", "route": route}) == label
