"""The production guide covers what an operator needs: every setting the services
read is documented, and the guide has the sections issue 8 asks for."""

from __future__ import annotations

import re

from tests.deploy.tools import OPERATIONS_DOC, setting_env_vars
from tests.infra import ROOT


def test_every_setting_is_documented_in_the_readme_or_the_docs() -> None:
    docs = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", docs))
    # README abbreviates families: `HEALTHSCORE_INGEST_PORT` / `_SCORING_PORT` / …
    assert setting_env_vars() - documented == set()


def test_the_guide_has_the_sections_operators_need() -> None:
    headings = re.findall(r"^##+ (.+)$", OPERATIONS_DOC.read_text(), flags=re.M)
    for wanted in (
        "Sizing",
        "Settings",
        "Upgrades and migrations",
        "Backup and restore",
        "Key management",
        "Scaling out on Kafka partitions",
        "Runbooks",
    ):
        assert wanted in headings, wanted
    text = OPERATIONS_DOC.read_text()
    for command in ("healthscore migrate", "healthscore keys create", "healthscore keys revoke",
                    "pg_dump", "kafka-topics.sh"):  # fmt: skip
        assert command in text, command
