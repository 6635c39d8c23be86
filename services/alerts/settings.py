from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from services.alerts.retry import RetryPolicy, parse_schedule
from services.alerts.ssrf import AllowList
from shared.settings import CommonSettings

DEFAULT_RULES_FILE = Path(__file__).resolve().parent / "default_rules.yaml"


class AlertsSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_ALERTS_HOST")
    port: int = Field(default=8002, validation_alias="HEALTHSCORE_ALERTS_PORT")
    consumer_group: str = Field(
        default="healthscore-alerts", validation_alias="HEALTHSCORE_ALERTS_CONSUMER_GROUP"
    )
    health_batch_max: int = Field(default=1000, ge=1, le=100_000)
    webhook_allowlist: str = Field(
        default="", description="Comma-separated hosts or CIDRs allowed despite the SSRF guard."
    )
    webhook_retry_schedule: str = Field(default="0,5,300,1800,7200,18000,36000,36000")
    webhook_retry_jitter: float = Field(default=0.1, ge=0, le=1)
    webhook_retry_after_max: float = Field(
        default=3600.0, ge=0, description="Longest Retry-After (seconds) honoured."
    )
    webhook_timeout: float = Field(default=15.0, gt=0, le=300, description="Seconds per attempt.")
    webhook_secret_overlap: float = Field(
        default=86400.0, ge=0, description="Seconds the previous secret still signs after rotation."
    )
    delivery_concurrency: int = Field(default=32, ge=1, le=1000)
    delivery_poll_interval: float = Field(default=0.5, gt=0, le=60)
    rules_file: Path = Field(
        default=DEFAULT_RULES_FILE,
        description="Rules loaded on first start, when the rules table is empty.",
    )
    load_default_rules: bool = True

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        parse_schedule(v)
        return v

    @field_validator("webhook_allowlist")
    @classmethod
    def _allowlist(cls, v: str) -> str:
        AllowList.parse(v)
        return v

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            parse_schedule(self.webhook_retry_schedule),
            self.webhook_retry_jitter,
            self.webhook_retry_after_max,
        )

    @property
    def allowlist(self) -> AllowList:
        return AllowList.parse(self.webhook_allowlist)
