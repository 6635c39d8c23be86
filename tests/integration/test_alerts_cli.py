"""``healthscore rules apply`` and ``healthscore deliveries replay`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from shared.embedded import free_port
from shared.health import KPI_NAMES
from tests.infra import ROOT, Infra, drop_database, new_database


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env=os.environ | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_rules_apply_upserts_by_id(env: dict[str, str], tmp_path: Path) -> None:
    defaults = ROOT / "services" / "alerts" / "default_rules.yaml"
    r = cli(env, "rules", "apply", str(defaults))
    assert r.returncode == 0, r.stderr
    assert "9 created, 0 updated" in r.stdout
    mine = tmp_path / "rules.yaml"
    mine.write_text(
        "- id: negative-nps\n  name: NPS well below 0\n  kpi: nps\n  op: '<'\n"
        "  threshold: -20\n  severity: critical\n"
        "- name: Few touchpoints\n  kpi: touchpoints_30d\n  op: '<'\n  threshold: 2\n"
    )
    r = cli(env, "rules", "apply", str(mine))
    assert r.returncode == 0, r.stderr
    assert "1 created, 1 updated" in r.stdout
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        row = await conn.fetchrow(
            "SELECT threshold, severity FROM alert_rules WHERE id = 'negative-nps'"
        )
        n = await conn.fetchval("SELECT count(*) FROM alert_rules")
    finally:
        await conn.close()
    assert (row["threshold"], row["severity"], n) == ("-20.0", "critical", 10)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  kpi: nps\n  op: '~'\n  threshold: 1\n")
    r = cli(env, "rules", "apply", str(bad))
    assert r.returncode == 2 and "rule #1" in r.stderr
    # a rule on a KPI that does not exist would never fire: the file is refused whole,
    # in one line naming the rule, the field and the names that exist
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        "- id: fine\n  name: ok\n  kpi: nps\n  op: '<'\n  threshold: 0\n"
        "- id: low-licence\n  name: x\n  kpi: licence_utilization\n  op: '<'\n  threshold: 0.5\n"
    )
    r = cli(env, "rules", "apply", str(typo))
    assert r.returncode == 2, r.stdout
    assert r.stderr.strip() == (
        f"{typo}: rule #2 (low-licence): kpi: unknown KPI 'licence_utilization' "
        "(did you mean 'license_utilization'?); a rule's kpi is one of: "
        + ", ".join((*KPI_NAMES, "score", "score_delta_7d", "band"))
    )
    conn = await asyncpg.connect(env["DATABASE_URL"])
    try:
        assert await conn.fetchval("SELECT count(*) FROM alert_rules WHERE id = 'fine'") == 0
    finally:
        await conn.close()


def test_deliveries_replay_arguments(env: dict[str, str]) -> None:
    assert cli(env, "deliveries", "replay").returncode == 2
    assert cli(env, "deliveries", "replay", "--since", "yesterday").returncode == 2
    r = cli(env, "deliveries", "replay", "--since", "2026-01-01T00:00:00Z")
    assert r.returncode == 0 and "0 deliveries" in r.stdout
    assert cli(env, "deliveries", "replay", "--id", "msg_nope").returncode == 1


async def test_alerts_refuses_to_start_on_a_rules_file_naming_an_unknown_kpi(
    infra: Infra, env: dict[str, str], tmp_path: Path
) -> None:
    url = await new_database(infra, "bad_rules_file")  # empty rules table: the file loads
    bad = tmp_path / "rules.yaml"
    bad.write_text("- id: typo\n  name: x\n  kpi: nonsense\n  op: '<'\n  threshold: 1\n")
    try:
        overrides = {"DATABASE_URL": url, "HEALTHSCORE_RULES_FILE": str(bad)}
        r = cli(env | overrides, "alerts", "--port", str(free_port()))
    finally:
        await drop_database(infra, url)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr, r.stderr
    assert f"HEALTHSCORE_RULES_FILE: {bad}: rule #1 (typo): kpi: unknown KPI 'nonsense'" in r.stderr
