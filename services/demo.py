"""``healthscore demo``: realistic traffic through the public ingest API.

A few dozen accounts, each telling one of the stories the product exists for —
healthy adopters; low licence utilisation after onboarding; a customer who used
the product daily for months and stopped; a champion who went silent; a
champion who left; NPS detractors with escalations; trial and POC accounts
inside their grace period — with backfilled history (events up to 90 days old),
so the dashboard and the alerts show something meaningful within a minute.

The story builders are pure (a seeded random generator, a given "now"); only
:func:`send` does I/O.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

KEY_FEATURES = ("dashboard", "report", "integration", "alert", "export")
OTHER_FEATURES = ("search", "settings", "comment", "share", "import")
HISTORY_DAYS = 90

Event = dict[str, Any]


@dataclass
class Story:
    """One demo account: what it does, and what Healthscore should conclude."""

    account_id: str
    name: str
    story: str
    expected_band: str | None  # green / yellow / red; None when not asserted
    expected_rules: tuple[str, ...] = ()  # default-rule KPIs expected to alert
    events: list[Event] = field(default_factory=list)


class _Builder:
    def __init__(self, account_id: str, now: datetime, rng: random.Random) -> None:
        self.account_id = account_id
        self.now = now
        self.rng = rng
        self.events: list[Event] = []
        self._n = 0

    def _add(self, type_: str, at: datetime, **fields: Any) -> None:
        self._n += 1
        self.events.append(
            {
                "id": f"demo-{self.account_id}-{self._n}",
                "type": type_,
                "account_id": self.account_id,
                "timestamp": at.isoformat(),
                **fields,
            }
        )

    def day(self, days_ago: int, hour: float | None = None) -> datetime:
        h = self.rng.uniform(8, 18) if hour is None else hour
        when = self.now - timedelta(days=days_ago)
        start = when.replace(hour=0, minute=0, second=0, microsecond=0)
        at = start + timedelta(hours=h)
        # leave room for the session and feature events a few minutes after a login
        return min(at, self.now - timedelta(minutes=5))

    def account(self, days_ago: int, **attrs: Any) -> None:
        self._add("account_updated", self.day(days_ago, 7), **attrs)

    def contact(self, contact_id: str, days_ago: int, **attrs: Any) -> None:
        self._add("contact_updated", self.day(days_ago, 7.5), contact_id=contact_id, **attrs)

    def usage(
        self,
        days: range,
        users: int,
        *,
        per_day: float,
        features: tuple[str, ...],
        weekends: bool = False,
    ) -> None:
        """Each day in ``days`` (days ago), about ``per_day`` of ``users`` are active:
        a login, a session and a few feature uses each."""
        for d in days:
            weekday = (self.now - timedelta(days=d)).weekday()
            if weekday >= 5 and not weekends:
                continue
            active = [u for u in range(users) if self.rng.random() < per_day]
            for u in active:
                user = f"{self.account_id}-u{u}"
                at = self.day(d)
                self._add("login", at, user_id=user)
                self._add(
                    "session",
                    at + timedelta(minutes=1),
                    user_id=user,
                    duration_seconds=round(self.rng.uniform(300, 2400), 1),
                )
                for f in self.rng.sample(features, k=min(len(features), self.rng.randint(1, 3))):
                    self._add(
                        "feature_used",
                        at + timedelta(minutes=2),
                        user_id=user,
                        feature=f,
                        count=self.rng.randint(1, 5),
                    )

    def talk(
        self,
        contact_id: str,
        days: range,
        every: int,
        *,
        channel: str = "email",
        direction: str = "inbound",
        sentiment: float | None = None,
        escalation: bool = False,
    ) -> None:
        for d in days:
            if d % every:
                continue
            fields: dict[str, Any] = {
                "channel": channel,
                "direction": direction,
                "contact_id": contact_id,
            }
            if sentiment is not None:
                fields["sentiment"] = round(
                    max(-1, min(1, sentiment + self.rng.uniform(-0.15, 0.15))), 2
                )
            if escalation:
                fields["escalation"] = True
            self._add("communication", self.day(d), **fields)

    def nps(self, contact_id: str, days_ago: int, score: int, comment: str | None = None) -> None:
        fields: dict[str, Any] = {"survey": "nps", "score": score, "contact_id": contact_id}
        if comment:
            fields["comment"] = comment
        self._add("survey_response", self.day(days_ago), **fields)


def _healthy(b: _Builder, i: int) -> None:
    seats = b.rng.choice((25, 40, 60))
    b.account(
        HISTORY_DAYS,
        name=f"Healthy Co {i}",
        seats_purchased=seats,
        lifecycle_stage="active",
        plan="enterprise",
        csm="dana",
        onboarding_completed_at=b.day(HISTORY_DAYS + 30).isoformat(),
    )
    b.contact("champ", HISTORY_DAYS, role="champion", name="Chris Champion")
    b.contact("vp", HISTORY_DAYS, role="executive_sponsor", name="Vera VP")
    b.contact("ops", HISTORY_DAYS, role="user", name="Otto Ops")
    b.usage(
        range(HISTORY_DAYS, -1, -1),
        int(seats * 0.95),
        per_day=0.8,
        features=KEY_FEATURES + OTHER_FEATURES,
        weekends=True,
    )
    b.talk("champ", range(HISTORY_DAYS, -1, -1), 4, sentiment=0.6)
    b.talk("vp", range(HISTORY_DAYS, -1, -1), 9, channel="meeting", sentiment=0.5)
    b.talk("ops", range(HISTORY_DAYS, -1, -1), 6, channel="chat", sentiment=0.4)
    b.talk("champ", range(HISTORY_DAYS, -1, -1), 5, direction="outbound")
    for d in (80, 40, 5):
        b.nps("champ", d, 10)
        b.nps("vp", d + 1, 9)


def _low_utilisation(b: _Builder) -> None:
    b.account(
        60,
        name="Shelfware Inc",
        seats_purchased=200,
        lifecycle_stage="active",
        csm="sam",
        onboarding_completed_at=b.day(45).isoformat(),
    )
    b.contact("champ", 60, role="champion", name="Pat Admin")
    b.contact("it", 60, role="user", name="Ian IT")
    b.usage(range(45, -1, -1), 30, per_day=0.6, features=("dashboard", "search"))
    b.talk("champ", range(45, -1, -1), 6, sentiment=0.2)
    b.talk("it", range(45, -1, -1), 10, channel="support_ticket", sentiment=0.0)
    b.nps("champ", 20, 7)


def _stopped(b: _Builder) -> None:
    b.account(
        HISTORY_DAYS,
        name="Yearlong Ltd (went quiet)",
        seats_purchased=30,
        lifecycle_stage="active",
        csm="dana",
        onboarding_completed_at=b.day(HISTORY_DAYS + 270).isoformat(),
    )
    b.contact("champ", HISTORY_DAYS, role="champion", name="Yolanda")
    # daily use until a month ago, then nothing: the call nobody made
    b.usage(range(HISTORY_DAYS, 31, -1), 28, per_day=0.9, features=KEY_FEATURES, weekends=True)
    b.talk("champ", range(HISTORY_DAYS, 35, -1), 5, sentiment=0.5)
    b.talk("champ", range(30, -1, -1), 5, direction="outbound")
    b.nps("champ", 60, 8)


def _champion_silent(b: _Builder) -> None:
    b.account(
        HISTORY_DAYS,
        name="Quiet Champion Corp",
        seats_purchased=40,
        lifecycle_stage="active",
        csm="sam",
        onboarding_completed_at=b.day(HISTORY_DAYS + 60).isoformat(),
    )
    b.contact("champ", HISTORY_DAYS, role="champion", name="Carl (silent)")
    b.contact("u1", HISTORY_DAYS, role="user", name="Uma")
    b.usage(range(HISTORY_DAYS, -1, -1), 34, per_day=0.7, features=KEY_FEATURES)
    b.talk("champ", range(HISTORY_DAYS, 35, -1), 3, sentiment=0.4)
    b.talk("champ", range(34, -1, -1), 4, direction="outbound")
    b.talk("u1", range(30, -1, -1), 9, channel="chat", sentiment=0.2)


def _champion_left(b: _Builder) -> None:
    b.account(
        HISTORY_DAYS,
        name="Departed Champion GmbH",
        seats_purchased=35,
        lifecycle_stage="active",
        csm="dana",
        onboarding_completed_at=b.day(HISTORY_DAYS + 90).isoformat(),
    )
    b.contact("champ", HISTORY_DAYS, role="champion", name="Lena (left)")
    b.contact("u1", HISTORY_DAYS, role="user", name="Max")
    b.usage(range(HISTORY_DAYS, -1, -1), 25, per_day=0.6, features=KEY_FEATURES[:3])
    b.talk("champ", range(HISTORY_DAYS, 25, -1), 4, sentiment=0.5)
    b.contact("champ", 20, left_company=True)
    b.talk("u1", range(20, -1, -1), 8, channel="chat", sentiment=0.0)


def _detractor(b: _Builder, i: int) -> None:
    b.account(
        HISTORY_DAYS,
        name=f"Angry Accounts {i}",
        seats_purchased=50,
        lifecycle_stage="active",
        csm="sam",
        onboarding_completed_at=b.day(HISTORY_DAYS + 120).isoformat(),
    )
    b.contact("champ", HISTORY_DAYS, role="champion", name="Dee Tractor")
    b.contact("cto", HISTORY_DAYS, role="decision_maker", name="Cole CTO")
    # broad use at first; after the escalations only a handful of people log in
    b.usage(range(HISTORY_DAYS, 40, -1), 40, per_day=0.5, features=("dashboard", "report"))
    b.usage(range(40, -1, -1), 8, per_day=0.3, features=("dashboard",))
    b.talk("champ", range(HISTORY_DAYS, -1, -1), 3, channel="support_ticket", sentiment=-0.6)
    b.talk("cto", range(25, -1, -1), 5, channel="support_ticket", sentiment=-0.8, escalation=True)
    for d, s in ((70, 4), (30, 2), (6, 1)):
        b.nps("champ", d, s, "too slow, too many bugs")
        b.nps("cto", d + 1, s + 1)


def _grace(b: _Builder, stage: str, i: int) -> None:
    b.account(
        6,
        name=f"{stage.upper()} Prospect {i}",
        seats_purchased=20,
        lifecycle_stage=stage,
        csm="dana",
    )
    b.contact("lead", 6, role="champion", name="Tina Trial")
    b.usage(range(6, -1, -1), 4, per_day=0.6, features=("dashboard", "search"), weekends=True)
    b.talk("lead", range(6, -1, -1), 2, channel="meeting", sentiment=0.5)


def build_stories(now: datetime, seed: int = 7, scale: int = 1) -> list[Story]:
    """Every demo account with its events, as of ``now`` (deterministic per seed)."""
    rng = random.Random(seed)
    stories: list[Story] = []

    def make(
        account_id: str,
        name: str,
        story: str,
        band: str | None,
        rules: tuple[str, ...],
        fill: Any,
        *args: Any,
    ) -> None:
        b = _Builder(account_id, now, random.Random(rng.random()))
        fill(b, *args)
        for e in b.events:  # one display name per account
            if e["type"] == "account_updated" and "name" in e:
                e["name"] = name
        stories.append(Story(account_id, name, story, band, rules, b.events))

    for i in range(1, 8 * scale + 1):
        make(f"healthy-{i}", f"Healthy Co {i}", "healthy adopter", "green", (), _healthy, i)
    for i in range(1, 2 * scale + 1):
        make(
            f"shelfware-{i}",
            f"Shelfware Inc {i}",
            "low licence utilisation after onboarding",
            None,
            ("license_utilization",),
            _low_utilisation,
        )
        make(
            f"went-quiet-{i}",
            f"Yearlong Ltd {i}",
            "used daily for months, then stopped",
            "red",
            ("days_since_last_activity",),
            _stopped,
        )
        make(
            f"quiet-champion-{i}",
            f"Quiet Champion Corp {i}",
            "champion went silent",
            None,
            ("champion_silence_days",),
            _champion_silent,
        )
        make(
            f"champion-left-{i}",
            f"Departed Champion GmbH {i}",
            "champion left the company",
            None,
            ("champion_left",),
            _champion_left,
        )
    for i in range(1, 3 * scale + 1):
        make(
            f"detractor-{i}",
            f"Angry Accounts {i}",
            "NPS detractors with escalations",
            "red",
            ("nps",),
            _detractor,
            i,
        )
        make(
            f"trial-{i}",
            f"TRIAL Prospect {i}",
            "trial inside its grace period",
            None,
            (),
            _grace,
            "trial",
            i,
        )
        make(
            f"poc-{i}",
            f"POC Prospect {i}",
            "proof of concept inside its grace period",
            None,
            (),
            _grace,
            "poc",
            i,
        )
    return stories


def _batches(events: list[Event], size: int) -> Iterator[list[Event]]:
    for i in range(0, len(events), size):
        yield events[i : i + size]


def send(
    events: list[Event],
    ingest_url: str,
    key: str,
    batch_size: int = 500,
    client: httpx.Client | None = None,
) -> int:
    """Post events to ``/v1/events`` in batches; retries 503/429 politely. Returns
    the number accepted; raises on any other refusal (a demo bug, not a user's)."""
    own = client is None
    client = client or httpx.Client(timeout=30)
    accepted = 0
    try:
        for batch in _batches(events, batch_size):
            for attempt in range(20):
                r = client.post(
                    f"{ingest_url}/v1/events",
                    json={"events": batch},
                    headers={"Authorization": f"Bearer {key}"},
                )
                if r.status_code in (429, 503):
                    time.sleep(
                        min(5.0, float(r.headers.get("retry-after", "1"))) * (1 + attempt / 10)
                    )
                    continue
                if r.status_code != 202:
                    raise RuntimeError(
                        f"ingest refused demo events: {r.status_code} {r.text[:500]}"
                    )
                accepted += int(r.json()["accepted"])
                break
            else:
                raise RuntimeError("ingest kept answering 503/429; is the broker up?")
    finally:
        if own:
            client.close()
    return accepted


def live_events(stories: list[Story], now: datetime, rng: random.Random) -> list[Event]:
    """A few minutes' worth of fresh activity for the accounts that are still active."""
    out: list[Event] = []
    for s in stories:
        if s.story in ("used daily for months, then stopped",):
            continue  # silence is the story
        b = _Builder(s.account_id, now, rng)
        b._n = int(now.timestamp())  # fresh ids
        users = 30 if s.story == "healthy adopter" else 8
        b.usage(
            range(0, 1), users, per_day=0.05, features=KEY_FEATURES + OTHER_FEATURES, weekends=True
        )
        for e in b.events:
            e["timestamp"] = now.isoformat()
        out.extend(b.events)
    return out


def consumed_events(scoring_url: str) -> float:
    """Events the scoring service has consumed so far (applied, duplicate or
    dead-lettered), read from its ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{scoring_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "healthscore_scoring_events_total"
    )


def rescore_backfill(
    scoring_url: str, since: float, sent: int, say: Any, timeout: float = 600
) -> None:
    """Wait until scoring has consumed the backfill, then recompute 90 days of history
    from the windows (a backfill changes past days; live scoring writes only today).
    Needs DATABASE_URL, like ``healthscore rescore``."""
    import asyncio

    from services.scoring.rescore import rescore
    from services.scoring.score_model import load_model
    from services.scoring.settings import ScoringSettings

    deadline = time.monotonic() + timeout
    while consumed_events(scoring_url) - since < sent:
        if time.monotonic() > deadline:
            say("demo: scoring has not caught up; run `healthscore rescore --days 90` later")
            return
        time.sleep(1)
    settings = ScoringSettings()
    model = load_model(settings.score_model)
    rows = asyncio.run(rescore(settings, HISTORY_DAYS, model, settings.clock()))
    say(f"demo: history rescored ({rows:,} account-days)")


def run_demo(
    ingest_url: str,
    key: str,
    *,
    live: bool,
    scale: int = 1,
    say: Any = print,
    stop: Any = None,
    scoring_url: str | None = None,
) -> int:
    """Backfill every story, then (``live``) trickle current activity until ``stop()``.
    With ``scoring_url`` (and DATABASE_URL), turn the backfill into daily history."""
    now = datetime.now(UTC)
    stories = build_stories(now, scale=scale)
    events = [e for s in stories for e in s.events]
    events.sort(key=lambda e: e["timestamp"])
    say(
        f"demo: sending {len(events):,} events for {len(stories)} accounts "
        f"({HISTORY_DAYS} days of history)"
    )
    started = time.monotonic()
    before = consumed_events(scoring_url) if scoring_url else 0.0
    accepted = send(events, ingest_url, key)
    say(f"demo: {accepted:,} events accepted in {time.monotonic() - started:.1f} s")
    for s in stories:
        say(f"  {s.account_id:<18} {s.story}")
    if scoring_url:
        rescore_backfill(scoring_url, before, accepted, say)
    rng = random.Random(99)
    with httpx.Client(timeout=30) as client:
        while live and not (stop and stop()):
            time.sleep(5)
            send(live_events(stories, datetime.now(UTC), rng), ingest_url, key, client=client)
    return accepted
