"""Typed settings, read once from the environment at process start and passed down.

Every service reads the same variables (SPEC §11). Service-specific settings
subclass :class:`CommonSettings`. Nothing else in the code reads ``os.environ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaProfile(StrEnum):
    """How the broker behaves; picks client settings that work on it.

    ``kafka``: real Apache Kafka (idempotent producer on, default group timing).
    ``embedded``: the tansu broker of the embedded default (no idempotent
    producer, short group timing and fetch waits; see EMBEDDED.md).
    """

    KAFKA = "kafka"
    EMBEDDED = "embedded"


@dataclass(frozen=True)
class Topics:
    """Topic names, derived from one prefix."""

    product: str
    communication: str
    health: str
    dlq: str

    @classmethod
    def from_prefix(cls, prefix: str) -> Topics:
        return cls(
            product=f"{prefix}.events.product",
            communication=f"{prefix}.events.communication",
            health=f"{prefix}.health",
            dlq=f"{prefix}.dlq",
        )

    @property
    def events(self) -> tuple[str, str]:
        return (self.product, self.communication)

    def all(self) -> tuple[str, ...]:
        return (self.product, self.communication, self.health, self.dlq)


class CommonSettings(BaseSettings):
    """Settings every service reads."""

    model_config = SettingsConfigDict(env_prefix="HEALTHSCORE_", extra="ignore", frozen=True)

    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        validation_alias="DATABASE_URL",
        description="PostgreSQL URL (postgresql://…); the asyncpg driver is implied.",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias="KAFKA_BOOTSTRAP_SERVERS",
        description="Comma-separated host:port list of the Kafka-protocol brokers.",
    )
    kafka_profile: KafkaProfile = Field(
        default=KafkaProfile.KAFKA,
        description="`kafka` for real Kafka, `embedded` for the tansu broker.",
    )
    topic_prefix: str = Field(default="healthscore", min_length=1, max_length=100)
    topic_partitions: int = Field(default=12, ge=1, le=1000)
    topic_replication_factor: int = Field(default=1, ge=1, le=10)
    bootstrap_key: str | None = Field(
        default=None,
        description="A key with every scope, for first start and automation.",
    )
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    dashboard_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Public URL of the scoring service, used for links in alerts.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, v: str) -> str:
        if not v.startswith(("postgresql://", "postgres://", "postgresql+asyncpg://")):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return v

    @field_validator("bootstrap_key")
    @classmethod
    def _strong_bootstrap_key(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("HEALTHSCORE_BOOTSTRAP_KEY must be at least 16 characters")
        return v or None

    @property
    def topics(self) -> Topics:
        return Topics.from_prefix(self.topic_prefix)
