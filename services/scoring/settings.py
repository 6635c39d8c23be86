from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from pydantic import AwareDatetime, Field

from services.scoring.clock import Clock, FixedClock, SystemClock
from shared.settings import CommonSettings


class ScoringSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_SCORING_HOST")
    port: int = Field(default=8001, validation_alias="HEALTHSCORE_SCORING_PORT")
    consumer_group: str = Field(
        default="healthscore-scoring", validation_alias="HEALTHSCORE_SCORING_CONSUMER_GROUP"
    )
    batch_max_events: int = Field(default=5_000, ge=1)
    evaluate_batch: int = Field(
        default=1_000, ge=1, le=10_000, description="Accounts evaluated per transaction."
    )
    evaluators: int = Field(
        default=2,
        ge=1,
        le=8,
        description="Evaluation rounds in flight at once (one computes while another "
        "waits for Postgres).",
    )
    pending_max_accounts: int = Field(
        default=20_000,
        ge=1,
        description="Accounts waiting for evaluation above which the consumer stops fetching.",
    )
    backlog_evaluate_interval: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="Seconds: while the consumer is more than a batch behind, an account "
        "waiting for evaluation waits up to this long, so it is evaluated once for many "
        "batches (0: after every batch). Without a backlog accounts are evaluated at once.",
    )
    shutdown_evaluate_seconds: float = Field(
        default=10.0, ge=0, description="On shutdown, time left to evaluate pending accounts."
    )
    sweep_interval: float = Field(default=900.0, gt=0, description="Seconds; SPEC §4.")
    sweep_poll_seconds: float = Field(
        default=5.0, gt=0, description="How often the sweeper looks for stale accounts."
    )
    sweep_batch: int = Field(default=500, ge=1, le=10_000)
    score_model: Path | None = Field(
        default=None, description="Score model YAML (default: the shipped model)."
    )
    session_secret: str | None = Field(
        default=None,
        min_length=32,
        description="Signs dashboard login cookies; set the same value on every scoring "
        "replica (default: random per process, so a restart logs everyone out).",
    )
    alerts_url: str | None = Field(
        default="http://127.0.0.1:8002",
        description="The alerts service, for alerts shown on the dashboard.",
    )
    alerts_key: str | None = Field(
        default=None,
        description="A key with the admin scope that the dashboard uses to read alerts "
        "(default: the bootstrap key).",
    )
    # Test-only clock controls (SPEC §4 "one clock tests can control"): never set
    # them in production.
    now: AwareDatetime | None = Field(
        default=None, description="TEST ONLY: a fixed current time for the scoring clock."
    )
    clock_offset_seconds: float = Field(
        default=0.0, description="TEST ONLY: shift the scoring clock by this many seconds."
    )

    @property
    def worker_connections(self) -> int:
        """Postgres connections the consumer and sweeper use at most: two batches
        (one applying, the next claiming its event ids), the evaluators, the sweeper."""
        return self.evaluators + 3

    def clock(self) -> Clock:
        if self.now is not None:
            return FixedClock(self.now)
        return SystemClock(timedelta(seconds=self.clock_offset_seconds))


__all__ = ["ScoringSettings", "datetime"]
