from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class ScoringSettings(CommonSettings):
    host: str = Field(default="0.0.0.0", validation_alias="HEALTHSCORE_SCORING_HOST")
    port: int = Field(default=8001, validation_alias="HEALTHSCORE_SCORING_PORT")
    consumer_group: str = "healthscore-scoring"
    batch_max_events: int = Field(default=5_000, ge=1)
    sweep_interval: float = Field(default=900.0, gt=0, description="Seconds; SPEC §4.")
