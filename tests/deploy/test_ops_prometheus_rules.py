"""The alerting rules: valid for Prometheus, each alert proven to fire (and to stay
quiet when it should) by `promtool test rules`, and each documented in a runbook."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.deploy.tools import (
    OPERATIONS_DOC,
    RULES,
    RULES_TEST,
    promql_metric_names,
    require_tool,
    rules,
)

SEVERITIES = {"critical", "warning"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_check_rules() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_test_rules_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The unit tests compare labels and annotations: a wrong expectation fails."""
    promtool = require_tool("promtool")
    (tmp_path / "rules.yml").write_text(RULES.read_text())
    broken = RULES_TEST.read_text().replace(
        "Ingest answers 5xx to 25% of requests", "Ingest answers 5xx to 26% of requests"
    )
    (tmp_path / "rules_test.yml").write_text(broken)
    result = _run(promtool, "test", "rules", str(tmp_path / "rules_test.yml"))
    assert result.returncode != 0
    assert "HealthscoreIngestErrorRate" in result.stdout + result.stderr


def test_every_alert_has_a_firing_test_and_some_have_a_quiet_one() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {str(r["alert"]) for r in rules()}
    assert names - fired == set(), "alerts without a test that makes them fire"
    assert quiet, "no test checks that an alert stays quiet"
    assert fired <= names and quiet <= names


def test_every_rule_has_severity_summary_description_and_a_runbook_section() -> None:
    doc_text = OPERATIONS_DOC.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+\s+(.+?)\s*$", doc_text, flags=re.M)}
    for rule in rules():
        name = rule["alert"]
        labels = rule["labels"]
        annotations = rule["annotations"]
        assert isinstance(labels, dict) and isinstance(annotations, dict)
        assert labels.get("severity") in SEVERITIES, name
        assert annotations.get("summary") and annotations.get("description"), name
        url = str(annotations.get("runbook_url", ""))
        assert "docs/operations.md#" in url, name
        anchor = url.rpartition("#")[2]
        assert anchor == str(name).lower(), f"{name}: runbook anchor {anchor}"
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"


def test_the_rules_cover_what_the_operators_need() -> None:
    """Issue 8: ingest errors, lag growing, latency p99 > 1 s, DLQ, webhook failures,
    outbox backlog, a service down: each watched through the metric that shows it."""
    used: dict[str, set[str]] = {}
    for rule in rules():
        used[str(rule["alert"])] = promql_metric_names(str(rule["expr"]))
    wanted = {
        "healthscore_http_request_duration_seconds_count",
        "healthscore_ingest_events_total",
        "healthscore_scoring_consumer_lag_events",
        "healthscore_scoring_event_to_score_seconds_bucket",
        "healthscore_scoring_events_total",
        "healthscore_webhook_deliveries_total",
        "healthscore_webhook_outbox_pending",
        "up",
    }
    assert wanted <= set().union(*used.values())
    latency = next(r for r in rules() if "event_to_score" in str(r["expr"]))
    assert "histogram_quantile(0.99" in str(latency["expr"]).replace(" ", "")
    assert re.search(r">\s*1\s*$", str(latency["expr"]).strip())


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")
