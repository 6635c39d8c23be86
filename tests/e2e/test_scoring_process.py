"""The scoring process refuses to start with an invalid score model, saying why."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.infra import ServiceProcess


def test_scoring_refuses_an_invalid_score_model(env: dict[str, str], tmp_path: Path) -> None:
    bad = tmp_path / "model.yaml"
    bad.write_text("version: v\nmeasures: [{kpi: dau, red: 3, green: 3}]\n")
    svc = ServiceProcess("scoring", env | {"HEALTHSCORE_SCORE_MODEL": str(bad)})
    with pytest.raises(RuntimeError, match="red and green must differ"):
        svc.start(timeout=60)
    assert svc.proc is not None and svc.proc.returncode == 2
    svc.stop()
