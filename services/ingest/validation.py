"""Validation of ``POST /v1/events`` bodies and the messages ingest publishes (SPEC §3.1).

Pure: bytes in, either a list of :class:`Problem` (answer 422, publish nothing)
or a list of :class:`Outgoing` messages ready for Kafka. The HTTP adapter only
reads the body and publishes.

Why it looks the way it does (the hot path, ~hundreds of thousands of events/s):
the whole ``events`` array is validated in one call of pydantic's Rust core in
*strict* JSON mode (``"5"`` is not an int, ``1`` is not a bool), and since strict
mode never coerces, the published message is the client's own JSON object with
only ``id``, ``timestamp`` and ``received_at`` set by us and ``sent_at`` removed —
exactly what :func:`shared.events.encode_event` would write for that event, without
building and dumping a model copy per event.

Two paths, same results: the *express* path (:func:`_express`) takes ordinary
bodies — UTC timestamps kept as text, no ``sent_at``, no ``\\u0000`` anywhere (so
the NUL rule of :mod:`shared.events` cannot fire and is left out) — in that one
pydantic call and nothing else; any other body (or any error) takes the *full*
path, which parses the body once more for the client's objects, words every
problem as the catalogue models do, and corrects skew and time zones. The unit tests check that
the express path takes only what the models accept and publishes what the full
path would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import UnionType
from typing import (
    Annotated,
    Any,
    NamedTuple,
    NotRequired,
    Union,
    cast,
    get_args,
    get_origin,
)

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from shared.events import (
    EVENT_TYPES,
    MAX_AGE,
    MAX_EVENT_BYTES,
    MAX_EVENTS_PER_REQUEST,
    MAX_FUTURE,
    NO_NUL,
    TOPIC_OF,
    Event,
    Topic,
    may_contain_nul,
)

_EVENT_TYPE_SET = frozenset(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a request is refused. ``index`` is the event's position in the
    request (None for the request as a whole); ``field`` the offending field
    (None when the event as a whole is wrong)."""

    index: int | None
    field: str | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


class Outgoing(NamedTuple):
    """One message for Kafka: the event's topic kind, key (account id) and value."""

    type: str
    topic: Topic
    key: bytes
    value: bytes


class Malformed(Exception):
    """The body is not JSON at all: answer 400."""


class TooLarge(Exception):
    """Too many events, or one event over 32 KiB: answer 413."""


def _fields_only(
    model: type[BaseModel], replace: Mapping[str, Any] | None = None, *, nul_rule: bool = True
) -> Any:
    """A TypedDict with exactly ``model``'s fields and constraints (extra fields
    forbidden). Validating into dicts skips building a model per event, which is
    most of pydantic's cost here; the model-level checks that a TypedDict cannot
    express run afterwards on the few types that have them (:data:`_MODEL_CHECKED`).
    Generated from the catalogue models, so the two cannot drift apart.
    ``replace`` gives some fields another type (``_DROP``: no such field);
    ``nul_rule=False`` leaves out :data:`shared.events.NO_NUL` (a Python call per
    string field, 0.45–1 µs per event: only for bodies that cannot hold a NUL)."""
    replace = replace or {}
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation: Any = info.annotation
        if name in replace:
            annotation = replace[name]
            if annotation is _DROP:
                continue
        elif info.metadata:
            annotation = Annotated[(annotation, *info.metadata)]
        if not nul_rule:
            annotation = _without_nul_rule(annotation)
        fields[name] = annotation if info.is_required() else NotRequired[annotation]
    typed = cast(Any, TypedDict)(f"{model.__name__}Fields", fields)
    typed.__pydantic_config__ = ConfigDict(extra="forbid")
    return typed


_DROP = object()


def _without_nul_rule(annotation: Any) -> Any:
    """``annotation`` without :data:`shared.events.NO_NUL`, in unions too."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        kept = [m for m in metadata if m is not NO_NUL]
        base = _without_nul_rule(base)
        return Annotated[(base, *kept)] if kept else base
    if origin is Union or origin is UnionType:
        return Union[tuple(_without_nul_rule(a) for a in get_args(annotation))]  # noqa: UP007
    return annotation


_CATALOGUE: dict[str, type[BaseModel]] = {
    get_args(m.model_fields["type"].annotation)[0]: m for m in get_args(get_args(Event)[0])
}
_MODEL_CHECKED = {t: m for t, m in _CATALOGUE.items() if m.__pydantic_decorators__.model_validators}
_FAST_EVENT: Any = Annotated[
    Union[tuple(_fields_only(m) for m in _CATALOGUE.values())],  # noqa: UP007
    Field(discriminator="type"),
]


class _EventsBody(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    events: list[_FAST_EVENT]


_BODY_ADAPTER: TypeAdapter[_EventsBody] = TypeAdapter(_EventsBody)

# The express path (:func:`_express`): a UTC timestamp with seconds,
# "YYYY-MM-DDTHH:MM:SS[.ffffff]" + "Z" or "+00:00", on a day that exists in every
# year (29 February is left to the full path), checked by pydantic's Rust regex and
# kept as the client's string. Every such string is a valid aware datetime.
_UTC_TIMESTAMP = (
    r"^[0-9]{4}-"
    r"((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])"
    r"|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
    r"|02-(0[1-9]|1[0-9]|2[0-8]))"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|\+00:00)$"
)
_UtcText = Annotated[str, StringConstraints(pattern=_UTC_TIMESTAMP)]


def _other_times(model: type[BaseModel]) -> bool:
    """Whether ``model`` has date or time fields besides the common ones."""
    common = {"timestamp", "sent_at", "received_at"}
    times = (date, datetime, AwareDatetime)
    return any(
        any(t in times for t in (info.annotation, *get_args(info.annotation)))
        for name, info in model.model_fields.items()
        if name not in common
    )


_EXPRESS_EVENT: Any = Annotated[
    Union[  # noqa: UP007
        tuple(
            _fields_only(m, {"timestamp": _UtcText | None, "sent_at": _DROP}, nul_rule=False)
            for m in _CATALOGUE.values()
            if not _other_times(m)
        )
    ],
    Field(discriminator="type"),
]


class _ExpressBody(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    events: list[_EXPRESS_EVENT]


_EXPRESS_ADAPTER: TypeAdapter[_ExpressBody] = TypeAdapter(_ExpressBody)


class _ModelsBody(BaseModel):
    """The same body through the catalogue models: the reference, used to word the
    errors of a body the fast path refused."""

    model_config = ConfigDict(extra="forbid")
    events: list[Event]


_MODELS_BODY_ADAPTER: TypeAdapter[_ModelsBody] = TypeAdapter(_ModelsBody)


def _validated(body: bytes) -> list[Mapping[str, Any]]:
    """Every event's validated fields; :class:`ValidationError` worded as the
    catalogue models word it."""
    try:
        parsed: list[Mapping[str, Any]] = _BODY_ADAPTER.validate_json(body, strict=True)["events"]
        for event in parsed:
            model = _MODEL_CHECKED.get(event["type"])
            if model is not None:
                model.model_validate(event)
        return parsed
    except ValidationError:
        events = _MODELS_BODY_ADAPTER.validate_json(body, strict=True).events
        return [e.__dict__ for e in events]  # the fast path was stricter: trust the models


_EVENT_LIST: TypeAdapter[list[Event]] = TypeAdapter(list[Event])


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"the body is not valid JSON: {exc}") from exc


def type_label(raw: object) -> str:
    """A bounded metrics label for a raw event: its type when in the catalogue."""
    if isinstance(raw, dict):
        t = raw.get("type")
        if isinstance(t, str) and t in _EVENT_TYPE_SET:
            return t
    return "unknown"


def check_count(events: Sequence[object]) -> None:
    """Raise :class:`TooLarge` for more than 2,500 events."""
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise TooLarge(
            f"{len(events)} events in one request; the limit is {MAX_EVENTS_PER_REQUEST}"
        )


def check_sizes(events: Sequence[object], body_size: int) -> None:
    """Raise :class:`TooLarge` for an event whose compact JSON is over 32 KiB."""
    if body_size <= MAX_EVENT_BYTES:
        return  # no event can be larger than the body that holds it
    for i, ev in enumerate(events):
        size = len(orjson.dumps(ev))
        if size > MAX_EVENT_BYTES:
            raise TooLarge(
                f"event {i} is {size} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KiB)"
            )


def _problems(exc: ValidationError, *, prefix: int) -> list[Problem]:
    """Per-event problems from pydantic errors whose ``loc`` starts after ``prefix``
    items (``("events", i, tag, field…)`` → prefix 1)."""
    out: list[Problem] = []
    field: str | None
    for err in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = err["loc"][prefix:]
        if not loc or not isinstance(loc[0], int):
            field = ".".join(str(p) for p in err["loc"]) or None
            out.append(Problem(None, field, err["msg"]))
            continue
        index = loc[0]
        rest = [str(p) for p in loc[2:]]  # loc[1] is the discriminator tag
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            field = "type"
            message = (
                "missing event type"
                if err["type"] == "union_tag_not_found"
                else "unknown event type; expected one of: " + ", ".join(EVENT_TYPES)
            )
        else:
            field = ".".join(rest) or None
            message = err["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
        out.append(Problem(index, field, message))
    return out


@dataclass(frozen=True, slots=True)
class Receipt:
    """The moment a request was received and the event times it accepts."""

    now: datetime  # aware UTC
    now_text: str  # RFC 3339, UTC
    latest: float  # epoch seconds: now + 5 minutes
    earliest: float  # epoch seconds: now - 400 days
    latest_text: str  # the same as "YYYY-MM-DDTHH:MM:SS" in UTC
    earliest_text: str

    @classmethod
    def at(cls, now: datetime) -> Receipt:
        now = now.astimezone(UTC)
        latest, earliest = now + MAX_FUTURE, now - MAX_AGE
        return cls(
            now,
            now.isoformat().replace("+00:00", "Z"),
            latest.timestamp(),
            earliest.timestamp(),
            latest.isoformat()[:19],
            earliest.isoformat()[:19],
        )

    def time_problem(self, ts: datetime, text: str | None) -> str | None:
        """Why ``ts`` is unacceptable, or None. ``text``: the client's string when
        it is UTC RFC 3339 with seconds — then the check is a string comparison
        (same order as time), which is much cheaper than ``ts.timestamp()``."""
        if text is not None:
            second = text[:19]
            if self.earliest_text < second < self.latest_text:
                return None
            if second > self.latest_text:
                return "timestamp is more than 5 minutes in the future"
            if second < self.earliest_text:
                return "timestamp is older than 400 days"
        try:
            epoch = ts.timestamp()
        except (OverflowError, ValueError):
            epoch = float("inf") if ts.year > 2000 else float("-inf")
        if epoch > self.latest:
            return "timestamp is more than 5 minutes in the future"
        if epoch < self.earliest:
            return "timestamp is older than 400 days"
        return None


def _utc_rfc3339(value: object) -> str | None:
    """``value`` when it is a "YYYY-MM-DDTHH:MM:SS…" string in UTC, else None."""
    if (
        isinstance(value, str)
        and len(value) >= 20
        and value[10] == "T"
        and value[13] == ":"
        and value[16] == ":"
        and (value[-1] == "Z" or value.endswith("+00:00"))
    ):
        return value
    return None


def finalise(
    index: int,
    event: Mapping[str, Any],
    raw: dict[str, Any],
    receipt: Receipt,
    new_id: Callable[[], str],
) -> Outgoing | Problem:
    """The message for one validated event, or why its time is unacceptable.

    ``event`` holds the validated fields (parsed times), ``raw`` is the event's
    JSON object (the client's, or the Segment mapping's) and is modified in
    place: ``id`` assigned when absent, ``timestamp`` defaulted to receipt time
    and corrected for client clock skew with ``sent_at``
    (``timestamp + (received_at − sent_at)``), normalised to UTC, ``received_at``
    stamped — the same result as :func:`shared.events.normalise` followed by
    ``encode_event``. Hot path (~all events): a client timestamp already in UTC
    RFC 3339 and inside the window is kept as the client's string, decided by
    comparing strings; everything else goes through :func:`_normalise_time`.
    """
    ts = event.get("timestamp")
    if ts is None:
        raw.pop("sent_at", None)  # nothing to correct: the receipt time is ours
        raw["timestamp"] = receipt.now_text
    else:
        text = raw["timestamp"]
        if not (
            "sent_at" not in raw
            and text.__class__ is str
            and len(text) >= 20
            and text[10] == "T"
            and text[13] == ":"
            and text[16] == ":"
            and (text[-1] == "Z" or text.endswith("+00:00"))
            and receipt.earliest_text < text[:19] < receipt.latest_text
        ):
            problem = _normalise_time(index, ts, event.get("sent_at"), raw, receipt)
            if problem is not None:
                return problem
    if raw.get("id") is None:
        raw["id"] = new_id()
    raw["received_at"] = receipt.now_text
    t = raw["type"]
    return Outgoing(t, TOPIC_OF[t], raw["account_id"].encode(), orjson.dumps(raw, option=_UTC_Z))


def _normalise_time(
    index: int, ts: datetime, sent_at: datetime | None, raw: dict[str, Any], receipt: Receipt
) -> Problem | None:
    """Skew correction, UTC normalisation and the time-window check for the
    events that miss the hot path; sets ``raw["timestamp"]``."""
    text: str | None = None
    if sent_at is not None:
        try:
            ts = ts + (receipt.now - sent_at)
        except OverflowError:
            return Problem(index, "sent_at", "sent_at is too far from the time of receipt")
        raw.pop("sent_at", None)
        raw["timestamp"] = ts.astimezone(UTC)
    else:
        raw.pop("sent_at", None)  # an explicit null
        text = _utc_rfc3339(raw["timestamp"])
        if text is None:
            raw["timestamp"] = ts.astimezone(UTC)
    problem = receipt.time_problem(ts, text)
    return None if problem is None else Problem(index, "timestamp", problem)


_UTC_Z = orjson.OPT_UTC_Z


def new_uuid() -> str:
    return str(uuid.uuid4())


def validate_events(
    body: bytes,
    *,
    now: datetime,
    new_id: Callable[[], str] = new_uuid,
) -> tuple[list[Outgoing], list[Problem], list[Any]]:
    """Validate a ``{"events": [...]}`` body.

    Returns ``(messages, problems, raw_events)``: when ``problems`` is not empty the
    request must be refused (422) and nothing published. Raises :class:`Malformed`
    (400) or :class:`TooLarge` (413).
    """
    express = _express(body, Receipt.at(now), new_id)
    if express is not None:
        return express[0], [], express[1]
    doc = parse_json(body)
    if not isinstance(doc, dict):
        return [], [Problem(None, None, 'the body must be a JSON object {"events": [...]}')], []
    raw_events = doc.get("events")
    if not isinstance(raw_events, list):
        return [], [Problem(None, "events", "events must be a list of events")], []
    check_count(raw_events)
    if not raw_events:
        return [], [Problem(None, "events", f"send 1 to {MAX_EVENTS_PER_REQUEST} events")], []
    try:
        parsed = _validated(body)
    except ValidationError as exc:
        # Sizes are checked only here: a valid event is always far below 32 KiB
        # (every string field has a maximum length), so the hot path skips it.
        check_sizes(raw_events, len(body))
        return [], _problems(exc, prefix=1), raw_events
    receipt = Receipt.at(now)
    messages: list[Outgoing] = []
    problems: list[Problem] = []
    for i, (event, raw) in enumerate(zip(parsed, raw_events, strict=True)):
        result = finalise(i, event, raw, receipt, new_id)
        if isinstance(result, Problem):
            problems.append(result)
        else:
            messages.append(result)
    return messages, problems, raw_events


def _express(
    body: bytes, receipt: Receipt, new_id: Callable[[], str]
) -> tuple[list[Outgoing], list[Any]] | None:
    """The messages for a body of ordinary events, or None: then the full path
    of :func:`validate_events` decides, with its precise errors.

    Ordinary: every event valid, 1–2,500 of them, each with a UTC timestamp
    with seconds inside the window (or none), no ``sent_at``, and no date field
    of its own (``account_updated``), and no ``\\u0000`` in the body (then no
    string can hold a NUL, so the express models leave the NUL rule out). That
    is one pydantic call on the raw bytes and no second parse: since strict
    validation never coerces (except ints in float fields, which the catalogue
    models would write as floats too) and the timestamp is kept as text, the
    validated dicts *are* the client's objects, ready to be stamped and encoded.
    """
    if may_contain_nul(body):
        return None
    try:
        events: list[dict[str, Any]] = _EXPRESS_ADAPTER.validate_json(body, strict=True)["events"]
        if not 0 < len(events) <= MAX_EVENTS_PER_REQUEST:
            return None
        for event in events:
            model = _MODEL_CHECKED.get(event["type"])
            if model is not None:
                model.model_validate(event)
    except ValidationError:
        return None
    messages: list[Outgoing] = []
    add = messages.append
    now_text, earliest, latest = receipt.now_text, receipt.earliest_text, receipt.latest_text
    dumps, topic_of, make = orjson.dumps, TOPIC_OF, tuple.__new__
    for event in events:
        text = event.get("timestamp")
        if text is None:
            event["timestamp"] = now_text
        elif not earliest < text[:19] < latest:
            return None  # outside the window, or on its edge: the full path words it
        if event.get("id") is None:
            event["id"] = new_id()
        event["received_at"] = now_text
        t = event["type"]
        value = dumps(event, option=_UTC_Z)
        add(make(Outgoing, (t, topic_of[t], event["account_id"].encode(), value)))
    return messages, events


def validate_one(index: int, raw: dict[str, Any]) -> Any:
    """Validate one mapped event (lax: Segment payloads are not ours to make strict);
    returns the model or a :class:`Problem`."""
    try:
        return _EVENT_LIST.validate_python([raw])[0]
    except ValidationError as exc:
        first = _problems(exc, prefix=0)[0]
        return Problem(index, first.field, first.message)
