from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class AlertsSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_ALERTS_HOST")
    port: int = Field(default=8002, validation_alias="HEALTHSCORE_ALERTS_PORT")
    consumer_group: str = "healthscore-alerts"
    webhook_allowlist: str = Field(
        default="", description="Comma-separated hosts or CIDRs allowed despite the SSRF guard."
    )
    webhook_retry_schedule: str = Field(default="0,5,300,1800,7200,18000,36000,36000")
