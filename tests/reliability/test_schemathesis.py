"""Schemathesis against each service's own OpenAPI document (ingest, scoring,
alerts running as processes), every operation, with a key that has every scope:
no generated request — valid or deliberately invalid — may get a 5xx, and answers
must match the documented schemas and content types. Bounded: a few examples per
operation, no example database, no deadline (the machine is shared)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.infra import ServiceProcess, running
from tests.reliability.pipeline import AUTH

pytestmark = pytest.mark.timeout(240)
EXAMPLES = 16  # per operation, valid and invalid requests mixed
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def services(env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    procs = {n: ServiceProcess(n, env) for n in ("ingest", "scoring", "alerts")}
    with running(*procs.values()):
        yield procs


@pytest.mark.parametrize("name", ["ingest", "scoring", "alerts"])
def test_no_generated_request_gets_a_5xx(name: str, services: dict[str, ServiceProcess]) -> None:
    base = services[name].url
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= {"ingest": 9, "scoring": 5, "alerts": 15}[name]
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    with requests.Session() as session:
        for op in operations:

            @hypothesis.given(case=st.one_of(op.as_strategy(mode) for mode in GenerationMode))
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: schemathesis.Case) -> None:
                response = case.call_and_validate(
                    base_url=base, session=session, headers=AUTH, checks=CHECKS, timeout=10
                )
                statuses[response.status_code] += 1

            try:
                check()
            except Exception as exc:  # collect every operation's failure, then report
                failures.append(f"{op.label}: {str(exc)[:1500]}")
    assert failures == [], "\n\n".join(failures)
    # the key was accepted and requests got through to the handlers, not only 4xx
    assert sum(n for status, n in statuses.items() if status < 300) >= len(operations) // 2
    assert sum(statuses.values()) >= 3 * len(operations), statuses
