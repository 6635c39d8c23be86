"""The monitoring assets against the real services: the three services run as
processes (as in production), their live /metrics pages pass `promtool check
metrics` and export every metric the dashboard and the alert rules query, and a
real Prometheus server (Debian's `prometheus` binary) scrapes them, loads the
alert rules and answers the queries an operator runs."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import yaml

from shared.embedded import free_port
from tests.deploy.tools import (
    DASHBOARD,
    DEPLOY,
    RULES,
    SYNTHETIC,
    exposition_names,
    promql_metric_names,
    require_tool,
    rules,
)
from tests.infra import ARTIFACTS, BOOTSTRAP_KEY, ServiceProcess, running

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
SERVICES = ("ingest", "scoring", "alerts")
_ids = itertools.count()


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    services = {n: ServiceProcess(n, env) for n in SERVICES}
    with running(*services.values()):
        post_events(services["ingest"], 4)
        yield services


def post_events(ingest: ServiceProcess, n: int) -> None:
    events = [
        {
            "id": f"ops-{next(_ids)}",
            "type": "login",
            "account_id": f"acct-{i % 3}",
            "user_id": f"u{i}",
        }
        for i in range(n)
    ]
    r = httpx.post(f"{ingest.url}/v1/events", json={"events": events}, headers=AUTH, timeout=15)
    assert r.status_code == 202, r.text


def live_metrics(stack: dict[str, ServiceProcess]) -> dict[str, str]:
    return {n: httpx.get(f"{s.url}/metrics", timeout=10).text for n, s in stack.items()}


# --- /metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_live_metrics_pass_promtool_check_metrics(
    stack: dict[str, ServiceProcess], service: str
) -> None:
    """`promtool check metrics` parses the page and lints names (counters end in
    _total, base units, HELP present...). prometheus_client's output is clean today,
    so any complaint is asserted on: it means a new metric breaks the conventions
    (SPEC §9) and would look wrong to operators. A parse error fails the same way."""
    promtool = require_tool("promtool")
    text = live_metrics(stack)[service]
    assert f'service="{service}"' in text
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )


def _queried_names() -> dict[str, set[str]]:
    """metric name → where it is queried (dashboard panel or alert rule)."""
    used: dict[str, set[str]] = {}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            for name in promql_metric_names(target["expr"]):
                used.setdefault(name, set()).add(f"panel {panel['title']!r}")
    for rule in rules():
        for name in promql_metric_names(str(rule["expr"])):
            used.setdefault(name, set()).add(f"rule {rule['alert']}")
    return used


def test_every_metric_the_dashboard_and_rules_query_is_exported(
    stack: dict[str, ServiceProcess],
) -> None:
    used = _queried_names()
    assert len(used) >= 15, "the expression parser found too few names"
    exported = set().union(*(exposition_names(t) for t in live_metrics(stack).values()))
    missing = {name: sorted(where) for name, where in used.items() if name not in exported}
    for name in SYNTHETIC:
        missing.pop(name, None)
    assert missing == {}, "queried but not exported by any service:\n" + "\n".join(
        f"  {n}: {', '.join(w)}" for n, w in sorted(missing.items())
    )


# --- a real Prometheus -------------------------------------------------------------


def _kubernetes_pod_job(ports: dict[str, int]) -> dict[str, Any]:
    """The scrape job of deploy/kubernetes/prometheus-scrape-config.yaml, with the
    pods Kubernetes discovery would find given as static targets carrying the same
    __meta_* labels, so the relabelling runs on a real server."""
    from tests.deploy.tools import load_yaml_docs

    docs = load_yaml_docs(DEPLOY / "kubernetes" / "prometheus-scrape-config.yaml")
    data = docs[0]["data"]
    assert isinstance(data, dict)
    (job,) = yaml.safe_load(data["prometheus.yml"])["scrape_configs"]
    del job["kubernetes_sd_configs"]

    def pod(component: str, scrape: str, port: int) -> dict[str, Any]:
        return {
            "targets": ["127.0.0.1:7"],  # pod IP and some container port
            "labels": {
                "__meta_kubernetes_namespace": "healthscore",
                "__meta_kubernetes_pod_name": f"healthscore-{component}-7d9f-x1",
                "__meta_kubernetes_pod_label_app_kubernetes_io_component": component,
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": scrape,
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
            },
        }

    job["static_configs"] = [
        pod("ingest", "true", ports["ingest"]),
        pod("migrate", "true", ports["ingest"]),  # not a service: dropped
        pod("scoring", "false", ports["scoring"]),  # not annotated for scraping: dropped
    ]
    return dict(job)


@pytest.fixture(scope="module")
def prometheus(
    stack: dict[str, ServiceProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    binary = require_tool("prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    ports = {n: s.port for n, s in stack.items()}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": f"healthscore-{n}",
                "static_configs": [{"targets": [f"127.0.0.1:{p}"]}],
            }
            for n, p in ports.items()
        ]
        + [_kubernetes_pod_job(ports)],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / f"prometheus-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _ready(url, proc), 30, "Prometheus did not become ready")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"prometheus exited with {proc.returncode}; see test-artifacts/")
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    return False


def _wait(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(message)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def query_until(
    url: str,
    promql: str,
    ok: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 10,
    between: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Poll an instant query until ``ok(result)``; ``between`` runs before each try
    (e.g. posting more events, so a rate has increases to see)."""
    result: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if between:
            between()
        result = query(url, promql)
        if ok(result):
            return result
        time.sleep(0.5)
    raise AssertionError(f"{promql} never satisfied the check; last result: {result}")


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


def test_prometheus_scrapes_the_three_services(prometheus: str) -> None:
    result = query_until(
        prometheus,
        'up{job=~"healthscore-(ingest|scoring|alerts)", namespace=""}',
        lambda r: len(r) == 3 and all(v == 1 for v in _values(r)),
    )
    assert sorted(r["metric"]["job"] for r in result) == [
        "healthscore-alerts",
        "healthscore-ingest",
        "healthscore-scoring",
    ]


def test_prometheus_answers_the_http_request_rate(
    prometheus: str, stack: dict[str, ServiceProcess]
) -> None:
    result = query_until(
        prometheus,
        "sum by (service, route) (rate(healthscore_http_request_duration_seconds_count"
        '{service="ingest", route="/v1/events", status="202"}[15s]))',
        lambda r: len(r) == 1 and _values(r)[0] > 0,
        between=lambda: post_events(stack["ingest"], 2),
    )
    assert result[0]["metric"] == {"service": "ingest", "route": "/v1/events"}


def test_prometheus_answers_the_ingest_event_rate(
    prometheus: str, stack: dict[str, ServiceProcess]
) -> None:
    """Needs ingest to count healthscore_ingest_events_total (the ingest service's work)."""
    result = query_until(
        prometheus,
        'sum by (outcome) (rate(healthscore_ingest_events_total{outcome="accepted"}[15s]))',
        lambda r: len(r) == 1 and _values(r)[0] > 0,
        between=lambda: post_events(stack["ingest"], 2),
    )
    assert result[0]["metric"] == {"outcome": "accepted"}


def test_prometheus_answers_the_consumer_lag(
    prometheus: str, stack: dict[str, ServiceProcess]
) -> None:
    """Needs scoring to export healthscore_scoring_consumer_lag_events per partition
    of the topics it consumes (the scoring service's work)."""
    result = query_until(
        prometheus,
        'healthscore_scoring_consumer_lag_events{job="healthscore-scoring"}',
        lambda r: len(r) > 0,
    )
    topics = {r["metric"]["topic"] for r in result}
    assert any(t.endswith(".events.product") for t in topics), topics
    assert all(v >= 0 for v in _values(result))
    assert all(r["metric"]["partition"].isdigit() for r in result)


def test_prometheus_evaluates_every_alert_rule_without_error(prometheus: str) -> None:
    def rules_state() -> list[dict[str, Any]]:
        r = httpx.get(f"{prometheus}/api/v1/rules", timeout=5)
        assert r.status_code == 200
        return [rule for g in r.json()["data"]["groups"] for rule in g["rules"]]

    def settled() -> bool:
        state = rules_state()
        return all(r["health"] != "unknown" for r in state) and all(
            r["state"] == "inactive" for r in state
        )

    # Right after start an evaluation may run before the first scrape (then
    # HealthscoreServiceMissing is briefly pending): wait for the steady state.
    with contextlib.suppress(AssertionError):
        _wait(settled, 15, "")
    state = rules_state()
    assert sorted(r["name"] for r in state) == sorted(str(r["alert"]) for r in rules())
    assert {r["name"]: r.get("lastError", "") for r in state if r["health"] != "ok"} == {}
    # Nothing is wrong with this healthy stack: no alert fires (or is pending).
    assert {r["name"]: r["state"] for r in state if r["state"] != "inactive"} == {}


def test_kubernetes_pod_scrape_config_relabels_to_the_service_jobs(
    prometheus: str, stack: dict[str, ServiceProcess]
) -> None:
    def pod_targets() -> dict[str, Any]:
        r = httpx.get(f"{prometheus}/api/v1/targets", timeout=5)
        data = r.json()["data"]
        return {
            "active": [t for t in data["activeTargets"] if t["scrapePool"] == "healthscore-pods"],
            "dropped": data["droppedTargets"],
        }

    _wait(
        lambda: any(t["health"] == "up" for t in pod_targets()["active"]),
        15,
        f"the annotated ingest pod was not scraped: {pod_targets()}",
    )
    (target,) = pod_targets()["active"]
    assert target["labels"]["job"] == "healthscore-ingest"
    assert target["labels"]["instance"] == f"127.0.0.1:{stack['ingest'].port}"
    assert target["labels"]["namespace"] == "healthscore"
    assert target["labels"]["pod"] == "healthscore-ingest-7d9f-x1"
    assert len(pod_targets()["dropped"]) == 2  # the migrate pod and the unannotated one
