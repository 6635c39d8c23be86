"""The event catalogue of SPEC §3.1: one set of schema models for ingest and scoring.

Ingest validates client input with :data:`EVENT_LIST_ADAPTER` (strict: unknown
fields, wrong types, out-of-range values and a NUL character in any string are
rejected), fills in ``id`` and ``timestamp``, corrects client clock skew and
stamps ``received_at``; then it publishes :func:`encode_event`. Scoring reads the
same bytes back with :func:`decode_event`, which also insists on what ingest
guarantees (an ``id``, a ``timestamp``, a ``received_at``), so a message written
to a topic by anything else that does not meet the contract goes to the
dead-letter topic.
"""

from __future__ import annotations

from datetime import UTC as _UTC
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

MAX_EVENTS_PER_REQUEST = 2_500
MAX_REQUEST_BYTES = 512 * 1024
MAX_EVENT_BYTES = 32 * 1024
MAX_FUTURE = timedelta(minutes=5)
MAX_AGE = timedelta(days=400)
DEDUP_WINDOW = timedelta(days=7)

NUL_MESSAGE = "must not contain a NUL character (U+0000)"


def contains_nul(text: str) -> bool:
    """The NUL rule: no text an event carries may hold U+0000. PostgreSQL ``text``
    cannot store it, so such an event could never reach the KPIs; ingest refuses it
    (422, or a Segment rejection) and scoring dead-letters it, by this one rule."""
    return "\x00" in text


def _refuse_nul(text: str) -> str:
    if contains_nul(text):
        raise PydanticCustomError("string_nul", NUL_MESSAGE)
    return text


NO_NUL = AfterValidator(_refuse_nul)
""":func:`contains_nul` as a constraint: on every string field of the catalogue."""


def may_contain_nul(raw: bytes) -> bool:
    """Whether some string of the JSON document ``raw`` may hold a NUL. JSON can only
    write U+0000 as the escape ``\\u0000`` (a raw control character in a string is
    invalid JSON), so when that sequence is absent no string can: a hot path may then
    skip :data:`NO_NUL`. A backslash is looked for first (memchr: ~2 ns per event)."""
    return b"\\" in raw and b"\\u0000" in raw


Id = Annotated[str, StringConstraints(min_length=1, max_length=128), NO_NUL]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256), NO_NUL]
LongText = Annotated[str, StringConstraints(max_length=4096), NO_NUL]


class Topic(StrEnum):
    PRODUCT = "product"
    COMMUNICATION = "communication"


class LifecycleStage(StrEnum):
    TRIAL = "trial"
    POC = "poc"
    ONBOARDING = "onboarding"
    ACTIVE = "active"
    CHURNED = "churned"


class Channel(StrEnum):
    EMAIL = "email"
    MEETING = "meeting"
    CALL = "call"
    CHAT = "chat"
    SUPPORT_TICKET = "support_ticket"
    MARKETING = "marketing"
    IN_APP = "in_app"


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Role(StrEnum):
    CHAMPION = "champion"
    DECISION_MAKER = "decision_maker"
    EXECUTIVE_SPONSOR = "executive_sponsor"
    USER = "user"
    OTHER = "other"


class Survey(StrEnum):
    NPS = "nps"
    CSAT = "csat"


def _field_error(model: BaseModel, field: str, kind: str, message: str) -> ValidationError:
    """A model-level check's error placed at ``field``, so that ingest's 422 names the
    field and not only the event: pydantic keeps the ``loc`` of a ValidationError raised
    inside a validator (pydantic-core #510), under the event's own location."""
    value = getattr(model, field, None)
    return ValidationError.from_exception_data(
        type(model).__name__,
        [InitErrorDetails(type=PydanticCustomError(kind, message), loc=(field,), input=value)],
    )


class _EventBase(BaseModel):
    """Fields common to every event. ``received_at`` is set by ingest only."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    id: Id | None = None
    account_id: Id
    timestamp: AwareDatetime | None = None
    sent_at: AwareDatetime | None = None
    received_at: AwareDatetime | None = None

    @property
    def topic(self) -> Topic:
        return TOPIC_OF[self.type]  # type: ignore[attr-defined]


class Login(_EventBase):
    type: Literal["login"]
    user_id: Id


class FeatureUsed(_EventBase):
    type: Literal["feature_used"]
    user_id: Id
    feature: Annotated[str, StringConstraints(min_length=1, max_length=128), NO_NUL]
    count: Annotated[int, Field(ge=1, le=1_000_000)] = 1


class Session(_EventBase):
    type: Literal["session"]
    user_id: Id
    duration_seconds: Annotated[float, Field(gt=0, le=86_400)]


class AccountUpdated(_EventBase):
    """A partial update: only the fields present change (``null`` clears one)."""

    type: Literal["account_updated"]
    name: ShortText | None = None
    seats_purchased: Annotated[int, Field(ge=0, le=10_000_000)] | None = None
    lifecycle_stage: LifecycleStage | None = None
    onboarding_completed_at: AwareDatetime | None = None
    plan: ShortText | None = None
    arr: Annotated[float, Field(ge=0)] | None = None
    renewal_date: date | None = None
    csm: ShortText | None = None

    @model_validator(mode="after")
    def _some_attribute(self) -> AccountUpdated:
        if not (self.model_fields_set & ACCOUNT_ATTRIBUTES):
            raise ValueError(
                "account_updated needs at least one of: " + ", ".join(sorted(ACCOUNT_ATTRIBUTES))
            )
        return self


class Communication(_EventBase):
    type: Literal["communication"]
    channel: Channel
    direction: Direction
    contact_id: Id
    sentiment: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    escalation: bool | None = None
    subject: Annotated[str, StringConstraints(max_length=1024), NO_NUL] | None = None


class ContactUpdated(_EventBase):
    type: Literal["contact_updated"]
    contact_id: Id
    role: Role | None = None
    name: ShortText | None = None
    email: ShortText | None = None
    left_company: bool | None = None

    @model_validator(mode="after")
    def _some_attribute(self) -> ContactUpdated:
        if not (self.model_fields_set & CONTACT_ATTRIBUTES):
            raise ValueError(
                "contact_updated needs at least one of: " + ", ".join(sorted(CONTACT_ATTRIBUTES))
            )
        return self


class SurveyResponse(_EventBase):
    type: Literal["survey_response"]
    survey: Survey
    score: int
    contact_id: Id | None = None
    user_id: Id | None = None
    comment: LongText | None = None

    @model_validator(mode="after")
    def _check(self) -> SurveyResponse:
        low, high = (0, 10) if self.survey is Survey.NPS else (1, 5)
        if not low <= self.score <= high:
            raise _field_error(
                self,
                "score",
                "score_range",
                f"score must be between {low} and {high} for a {self.survey} survey",
            )
        if self.contact_id is None and self.user_id is None:
            # named after the first of the two, as a missing required field is
            raise _field_error(
                self, "contact_id", "missing_one_of", "survey_response needs contact_id or user_id"
            )
        return self


# The attributes a partial update may carry, in a fixed order (storage columns).
ACCOUNT_ATTRIBUTE_NAMES: tuple[str, ...] = (
    "name",
    "seats_purchased",
    "lifecycle_stage",
    "onboarding_completed_at",
    "plan",
    "arr",
    "renewal_date",
    "csm",
)
CONTACT_ATTRIBUTE_NAMES: tuple[str, ...] = ("role", "name", "email", "left_company")
ACCOUNT_ATTRIBUTES = frozenset(ACCOUNT_ATTRIBUTE_NAMES)
CONTACT_ATTRIBUTES = frozenset(CONTACT_ATTRIBUTE_NAMES)

Event = Annotated[
    Login
    | FeatureUsed
    | Session
    | AccountUpdated
    | Communication
    | ContactUpdated
    | SurveyResponse,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[str, ...] = (
    "login",
    "feature_used",
    "session",
    "account_updated",
    "communication",
    "contact_updated",
    "survey_response",
)
TOPIC_OF: dict[str, Topic] = {
    "login": Topic.PRODUCT,
    "feature_used": Topic.PRODUCT,
    "session": Topic.PRODUCT,
    "account_updated": Topic.PRODUCT,
    "communication": Topic.COMMUNICATION,
    "contact_updated": Topic.COMMUNICATION,
    "survey_response": Topic.COMMUNICATION,
}
PRODUCT_ACTIVITY_TYPES = frozenset({"login", "feature_used", "session"})

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
EVENT_LIST_ADAPTER: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


class WireError(ValueError):
    """A message on an event topic that does not meet the wire contract."""


def encode_event(event: _EventBase) -> bytes:
    """Serialise a normalised event (id, timestamp, received_at set) for Kafka."""
    # exclude_unset keeps a partial update partial: a field absent stays absent,
    # an explicit null (clear it) stays null.
    return orjson.dumps(event.model_dump(mode="json", exclude_unset=True, exclude={"sent_at"}))


def decode_event(raw: bytes | None) -> Event:
    """Parse a Kafka message value back into an event; :class:`WireError` when it
    is corrupt or misses what ingest always sets."""
    if raw is None:
        raise WireError("message has no value")
    try:  # straight from bytes: a third cheaper than orjson.loads + validate_python
        event = EVENT_ADAPTER.validate_json(raw)
    except ValueError as exc:
        if isinstance(exc, ValidationError) and exc.errors()[0]["type"] == "json_invalid":
            raise WireError(f"value is not JSON: {exc.errors()[0]['msg']}") from exc
        raise WireError(f"value fails the event schema: {exc}") from exc
    if event.id is None or event.timestamp is None or event.received_at is None:
        missing = [f for f in ("id", "timestamp", "received_at") if getattr(event, f) is None]
        raise WireError("value misses " + ", ".join(missing))
    return event


def event_day(event: _EventBase) -> date:
    """The UTC day an event belongs to (windows use event time, not arrival)."""
    assert event.timestamp is not None
    return event.timestamp.astimezone(_UTC).date()


def normalise(event: Event, *, received_at: datetime, new_id: str) -> Event:
    """What ingest publishes: id assigned when absent, ``timestamp`` defaulted to
    receipt time and corrected for client clock skew with ``sent_at``
    (``timestamp + (received_at − sent_at)``), ``received_at`` stamped."""
    ts = event.timestamp or received_at
    if event.sent_at is not None and event.timestamp is not None:
        ts = ts + (received_at - event.sent_at)
    return event.model_copy(
        update={
            "id": event.id or new_id,
            "timestamp": ts.astimezone(_UTC),
            "sent_at": None,
            "received_at": received_at,
        }
    )


def time_problem(event: _EventBase, *, now: datetime) -> str | None:
    """Why a normalised event's timestamp is unacceptable, or None."""
    assert event.timestamp is not None
    if event.timestamp > now + MAX_FUTURE:
        return "timestamp is more than 5 minutes in the future"
    if event.timestamp < now - MAX_AGE:
        return "timestamp is older than 400 days"
    return None
