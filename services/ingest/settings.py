from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class IngestSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_INGEST_HOST")
    port: int = Field(default=8000, validation_alias="HEALTHSCORE_INGEST_PORT")
    publish_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long ingest waits for Kafka's acknowledgement before answering 503.",
    )
