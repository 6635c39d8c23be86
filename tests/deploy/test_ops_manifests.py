"""Deployment files: Kubernetes manifests valid against the Kubernetes schemas and
coherent with each other, the compose file wired together, the Dockerfile running
the `healthscore` command as a non-root user, Prometheus configs accepted by
promtool, the Grafana dashboard and its provisioning well-formed."""

from __future__ import annotations

import base64
import copy
import json
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.tools import (
    DASHBOARD,
    DEPLOY,
    load_yaml_docs,
    require_tool,
    setting_env_vars,
)
from tests.infra import ROOT

K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30.0"  # oldest Kubernetes the manifests promise to work on
SERVICES = {"ingest": 8000, "scoring": 8001, "alerts": 8002}
CLI_COMMANDS = {"ingest", "scoring", "alerts", "migrate"}


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kustomization["resources"]:
        for doc in load_yaml_docs(K8S / name):
            out.append((name, doc))
    return out


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _manifests() if d["kind"] == kind}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- Kubernetes -------------------------------------------------------------------


def test_kustomization_lists_every_manifest_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


@pytest.mark.parametrize(
    "kind_name", [f"{d['kind']}/{d['metadata']['name']}" for _, d in _manifests()]
)
def test_manifest_validates_against_the_kubernetes_schema(kind_name: str) -> None:
    doc = next(d for _, d in _manifests() if f"{d['kind']}/{d['metadata']['name']}" == kind_name)
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        pytest.skip(
            "ServiceMonitor is a Prometheus Operator CRD: kubernetes-validate ships only core "
            "schemas; its structure is checked in test_service_monitor_selects_the_services"
        )
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_validation_rejects_a_broken_deployment() -> None:
    """The validator really checks: a typo'd field and a wrong type are refused."""
    deployment = copy.deepcopy(_by_kind("Deployment")["healthscore-ingest"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(_by_kind("Deployment")["healthscore-ingest"])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_deployment_runs_the_service_safely(service: str) -> None:
    deployment = _by_kind("Deployment")[f"healthscore-{service}"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    port = SERVICES[service]
    assert container["args"][0] == service
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    assert container["ports"][0]["containerPort"] == port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(container["resources"])
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"healthscore-config", "healthscore-secrets"}
    # Prometheus without the Operator finds the pod by these annotations.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    # The Service and the PodDisruptionBudget select these pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    svc = _by_kind("Service")[f"healthscore-{service}"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] in ("http", port)
    pdb = _by_kind("PodDisruptionBudget")[f"healthscore-{service}"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_ingest_waits_before_stopping_so_no_request_hits_a_closed_port() -> None:
    container = _container(_by_kind("Deployment")["healthscore-ingest"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) > 0
    grace = _by_kind("Deployment")["healthscore-ingest"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    assert grace > int(command[1]) + 10, "the grace period must cover the sleep and a drain"


def test_scoring_replicas_do_not_exceed_partitions_and_say_why() -> None:
    partitions = int(
        _by_kind("ConfigMap")["healthscore-config"]["data"]["HEALTHSCORE_TOPIC_PARTITIONS"]
    )
    assert _by_kind("Deployment")["healthscore-scoring"]["spec"]["replicas"] <= partitions
    assert re.search(
        r"replicas\s*<=\s*HEALTHSCORE_TOPIC_PARTITIONS", (K8S / "scoring.yaml").read_text()
    )


def test_migration_job_runs_healthscore_migrate_once() -> None:
    job = _by_kind("Job")["healthscore-migrate"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["containers"][0]["args"] == ["migrate"]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_secret_is_an_example_with_placeholders_only() -> None:
    secret = _by_kind("Secret")["healthscore-secrets"]
    assert set(secret["stringData"]) == {
        "DATABASE_URL",
        "HEALTHSCORE_BOOTSTRAP_KEY",
        "HEALTHSCORE_SESSION_SECRET",
    }
    assert all("CHANGE_ME" in v for v in secret["stringData"].values())
    assert len(secret["stringData"]["HEALTHSCORE_BOOTSTRAP_KEY"]) >= 16  # settings would refuse it
    assert len(secret["stringData"]["HEALTHSCORE_SESSION_SECRET"]) >= 32


def test_config_map_names_only_settings_the_services_read() -> None:
    data = _by_kind("ConfigMap")["healthscore-config"]["data"]
    secret = _by_kind("Secret")["healthscore-secrets"]["stringData"]
    assert set(data) - setting_env_vars() == set(), "ConfigMap keys no service reads"
    assert set(secret) - setting_env_vars() == set(), "Secret keys no service reads"
    assert not set(data) & set(secret)
    # every scoring replica must sign dashboard sessions with the same secret
    assert "HEALTHSCORE_SESSION_SECRET" in secret


def test_service_monitor_selects_the_services() -> None:
    (monitor,) = [d for _, d in _manifests() if d["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels"}
    assert spec["endpoints"] and all(e["port"] == "http" for e in spec["endpoints"])
    assert all(e.get("path", "/metrics") == "/metrics" for e in spec["endpoints"])
    selected = [
        s
        for s in _by_kind("Service").values()
        if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    # job label = Service name = healthscore-<service>, what the alert rules match
    assert sorted(s["metadata"]["name"] for s in selected) == [
        f"healthscore-{n}" for n in sorted(SERVICES)
    ]


def test_plain_prometheus_scrape_config_is_valid(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    text = _by_kind("ConfigMap")["healthscore-prometheus-scrape"]["data"]["prometheus.yml"]
    config = yaml.safe_load(text)
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "healthscore-pods"
    assert job["kubernetes_sd_configs"][0]["role"] == "pod"
    # Debian's Prometheus is built without Kubernetes discovery, so promtool checks
    # the relabelling (regexes, actions) on a static target list instead; the live
    # test in test_ops_live_metrics.py runs these relabel rules on a real server.
    job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
    del job["kubernetes_sd_configs"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- compose, Dockerfile, Prometheus config ------------------------------------------


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()))


def test_compose_is_wired_together() -> None:
    services = _compose()["services"]
    assert {"kafka", "postgres", "migrate", "prometheus", "grafana", *SERVICES} <= set(services)
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    for name in (*SERVICES, "migrate"):
        svc = services[name]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert svc["command"][0] == name and svc["command"][0] in CLI_COMMANDS
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert "@postgres:5432/" in svc["environment"]["DATABASE_URL"]
    for name, port in SERVICES.items():
        svc = services[name]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert str(port) in svc["command"]
        assert f"127.0.0.1:{port}/readyz" in " ".join(svc["healthcheck"]["test"])
    assert "healthcheck" in services["kafka"] and "healthcheck" in services["postgres"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    # fixed, so the data volume survives restarts; Kafka wants a base64url-encoded UUID
    assert len(base64.urlsafe_b64decode(kafka["environment"]["CLUSTER_ID"] + "==")) == 16
    assert "ZOOKEEPER" not in " ".join(kafka["environment"])


def test_compose_mounts_files_that_exist() -> None:
    for name, svc in _compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"


def test_dockerfile_runs_healthscore_as_non_root_without_dev_extra() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["healthscore"\]', text, flags=re.M)
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("root", "0:", "0")), users
    installs = re.findall(r"pip install ([^\n\\]*)", text)
    assert any(i.strip() == "." for i in installs), installs
    assert "[dev]" not in text
    # what `pip install .` needs: the project metadata (readme included) and every package
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copies = re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.M)
    copied = {word for line in copies for word in line.split()[:-1]}  # sources, not the target
    assert {"pyproject.toml", project["project"]["readme"]} <= copied
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in copied, f"the image misses package {pattern}"


def test_compose_prometheus_config_scrapes_the_three_services(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for name, port in SERVICES.items():
        targets = jobs[f"healthscore-{name}"]["static_configs"][0]["targets"]
        assert targets == [f"{name}:{port}"]
        # A target label `service` would clash with the metric's own label.
        assert "labels" not in jobs[f"healthscore-{name}"]["static_configs"][0]
    # promtool checks referenced rule files exist: point them at the repository copy.
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ----------------------------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_dashboard_uses_a_datasource_variable_everywhere() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].strip()


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_dashboard_has_red_panels_for_each_service() -> None:
    for service in SERVICES:
        exprs = " ".join(
            t["expr"]
            for p in _panels()
            for t in p["targets"]
            if f'service="{service}"' in t["expr"]
        )
        assert "healthscore_http_request_duration_seconds_count" in exprs  # rate + errors
        assert 'status=~"4..|5.."' in exprs or 'status=~"5.."' in exprs
        for q in ("0.5", "0.95", "0.99"):
            assert f"histogram_quantile({q}, " in exprs


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasources["datasources"][0]["type"] == "prometheus"
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/healthscore.yml").read_text()
    )
    path = providers["providers"][0]["options"]["path"]
    grafana = _compose()["services"]["grafana"]
    mounted = [v.split(":")[1] for v in grafana["volumes"] if "healthscore.json" in v]
    assert mounted and Path(mounted[0]).parent == Path(path)
