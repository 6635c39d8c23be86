from __future__ import annotations

from pydantic import Field

from services.ingest.segment import DEFAULT_LOGIN_EVENTS
from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_INGEST_HOST")
    port: int = Field(default=8000, validation_alias="HEALTHSCORE_INGEST_PORT")
    publish_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long ingest waits for Kafka's acknowledgement before answering 503.",
    )
    retry_after_seconds: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="Retry-After sent with a 503 when the broker cannot take the events.",
    )
    segment_login_events: str = Field(
        default=",".join(DEFAULT_LOGIN_EVENTS),
        description="Comma-separated Segment track event names that count as a login.",
    )

    @property
    def login_events(self) -> frozenset[str]:
        return frozenset(n.strip() for n in self.segment_login_events.split(",") if n.strip())
