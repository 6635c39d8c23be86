"""Helpers for the deployment tests: external tools, PromQL and exposition parsing."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from tests.infra import ROOT

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "healthscore.json"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Series Prometheus itself makes for every target (not exported by a service).
SYNTHETIC = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


def require_tool(name: str) -> str:
    """Path of an external tool. Missing on a laptop: skip, with the fix. Missing
    in CI (env var CI set): fail, because .ci/run installs it."""
    path = shutil.which(name)
    if path:
        return path
    message = (
        f"`{name}` not found: install Debian's `prometheus` package "
        "(apt-get install --no-install-recommends prometheus) to run this test"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must have it (.ci/run installs it)")
    pytest.skip(message)


# --- PromQL --------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
     "bool", "offset", "inf", "nan", "le"}
)  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (function names, label names,
    keywords, strings, durations and numbers left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(1)
        if word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def rules() -> list[dict[str, object]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


# --- exposition format -----------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{|\s)")


def exposition_names(text: str) -> set[str]:
    """Every series name a /metrics page offers to PromQL: sample names, and for
    metrics declared by HELP/TYPE without samples yet (a labelled metric before its
    first observation) the names their type implies."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "summary":
                names |= {name, f"{name}_sum", f"{name}_count"}
            elif kind == "counter":
                names.add(name if name.endswith("_total") else f"{name}_total")
            else:
                names.add(name)
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            if m:
                names.add(m.group(1))
    return names


def setting_env_vars() -> set[str]:
    """The environment variables the three services' settings classes read."""
    from services.alerts.settings import AlertsSettings
    from services.ingest.settings import IngestSettings
    from services.scoring.settings import ScoringSettings

    names = set()
    for cls in (IngestSettings, ScoringSettings, AlertsSettings):
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


def load_yaml_docs(path: Path) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
