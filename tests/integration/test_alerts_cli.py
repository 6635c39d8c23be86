"""``healthscore rules apply`` and ``healthscore deliveries replay`` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.infra import ROOT


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


def test_deliveries_replay_arguments(env: dict[str, str]) -> None:
    assert cli(env, "deliveries", "replay").returncode == 2
    assert cli(env, "deliveries", "replay", "--since", "yesterday").returncode == 2
    r = cli(env, "deliveries", "replay", "--since", "2026-01-01T00:00:00Z")
    assert r.returncode == 0 and "0 deliveries" in r.stdout
    assert cli(env, "deliveries", "replay", "--id", "msg_nope").returncode == 1
