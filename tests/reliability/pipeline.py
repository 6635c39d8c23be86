"""The cross-service harness of the reliability suite: a seeded event plan, a client
that posts it over HTTP as a well-behaved user would (resending a failed request
with the same ids until it gets a 202), an independent oracle for the KPIs
(SPEC §4, computed here from the events that got a 202, sharing no code with
scoring), and tallies of the webhooks that real receivers got.

Used by the crash matrix and the broker-restart test; not a test module itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import orjson

from tests.infra import ARTIFACTS, BOOTSTRAP_KEY
from tests.webhook_receiver import Receiver

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
KEY_FEATURES = ("dashboard", "report", "integration", "alert", "export")  # shipped model
FEATURES = ("dashboard", "report", "export", "search", "share")
# KPIs the oracle computes; each one can only match if nothing is lost or doubled.
ORACLE_KPIS = (
    "dau",
    "wau",
    "mau",
    "stickiness",
    "features_used_30d",
    "feature_adoption",
    "touchpoints_30d",
    "active_stakeholders",
    "time_in_product_minutes",
    "nps",
)
# Day offsets used for event times: none near the 7-day edge, so a UTC midnight
# during a run moves no event across the wau window (the oracle uses each answer's
# own as_of anyway).
DAY_OFFSETS = (0, 1, 2, 3, 4, 10, 12, 15, 18, 20)
ALERT_RULE = "negative-nps"  # shipped default: nps < 0, fires once per account

Event = dict[str, Any]


def pipeline_env(env: dict[str, str]) -> dict[str, str]:
    """The three services with short timings: webhooks to local receivers, a short
    retry schedule, a fast sweeper (re-publishes snapshots a crash left unsent)."""
    return env | {
        "HEALTHSCORE_WEBHOOK_ALLOWLIST": "127.0.0.1/32",
        "HEALTHSCORE_WEBHOOK_RETRY_SCHEDULE": "0,1,1,2,2,2",
        "HEALTHSCORE_WEBHOOK_RETRY_JITTER": "0",
        "HEALTHSCORE_WEBHOOK_TIMEOUT": "2",
        "HEALTHSCORE_DELIVERY_POLL_INTERVAL": "0.2",
        "HEALTHSCORE_SWEEP_POLL_SECONDS": "1",
        "HEALTHSCORE_BATCH_MAX_EVENTS": "200",
    }


def plan(
    accounts: list[str], detractors: set[str], per_account: int, seed: int, prefix: str
) -> list[Event]:
    """A seeded, shuffled stream: logins, features, sessions (60 s each, so minutes in
    product count sessions), communications, and NPS answers — only detractor scores
    (0–6) for ``detractors`` (nps = −100: the alert fires once) and only promoter
    scores for the others (it never fires)."""
    rnd = random.Random(seed)
    now = datetime.now(UTC)
    events: list[Event] = []
    for acct in accounts:
        for i in range(per_account):
            ts = now - timedelta(days=rnd.choice(DAY_OFFSETS), minutes=rnd.randrange(1, 300))
            ev: Event = {
                "id": f"{prefix}-{acct}-{i}",
                "account_id": acct,
                "timestamp": ts.isoformat(),
            }
            user = f"u{rnd.randrange(8)}"
            kind = rnd.random()
            if kind < 0.2:
                ev |= {"type": "login", "user_id": user}
            elif kind < 0.4:
                ev |= {
                    "type": "feature_used",
                    "user_id": user,
                    "feature": rnd.choice(FEATURES),
                    "count": rnd.randrange(1, 4),
                }
            elif kind < 0.6:
                ev |= {"type": "session", "user_id": user, "duration_seconds": 60}
            elif kind < 0.9:
                ev |= {
                    "type": "communication",
                    "channel": rnd.choice(["email", "meeting", "call"]),
                    "direction": rnd.choice(["inbound", "outbound"]),
                    "contact_id": f"c{rnd.randrange(5)}",
                }
            else:
                score = rnd.randrange(0, 7) if acct in detractors else rnd.randrange(9, 11)
                ev |= {
                    "type": "survey_response",
                    "survey": "nps",
                    "score": score,
                    "contact_id": f"c{rnd.randrange(5)}",
                }
            events.append(ev)
    rnd.shuffle(events)
    return events


def _day(ev: Event) -> date:
    return datetime.fromisoformat(str(ev["timestamp"])).astimezone(UTC).date()


def oracle(events: Iterable[Event], account: str, as_of: date) -> dict[str, Any]:
    """SPEC §4 for ``account`` as of ``as_of``, from scratch; an event id counts once."""
    unique = {str(e["id"]): e for e in events if e["account_id"] == account}
    ago: dict[str, int] = {i: (as_of - _day(e)).days for i, e in unique.items()}

    def within(days: int) -> list[Event]:
        return [e for i, e in unique.items() if 0 <= ago[i] < days]

    def users(evs: list[Event]) -> set[str]:
        return {str(e["user_id"]) for e in evs if "user_id" in e and e["type"] != "survey_response"}

    month = within(30)
    mau = len(users(month))
    # Σ over the 30 days of each day's distinct users (a user counts once a day)
    user_days = len(
        {
            (ago[i], str(e["user_id"]))
            for i, e in unique.items()
            if 0 <= ago[i] < 30 and "user_id" in e and e["type"] != "survey_response"
        }
    )
    features = {str(e["feature"]) for e in month if e["type"] == "feature_used"}
    comms = [e for e in month if e["type"] == "communication"]
    sessions = sum(1 for e in month if e["type"] == "session")
    nps_scores = [int(e["score"]) for e in within(90) if e["type"] == "survey_response"]
    nps = None
    if nps_scores:
        promoters = sum(s >= 9 for s in nps_scores)
        detractors = sum(s <= 6 for s in nps_scores)
        nps = 100 * (promoters - detractors) / len(nps_scores)
    return {
        "dau": len(users(within(1))),
        "wau": len(users(within(7))),
        "mau": mau,
        "stickiness": user_days / 30 / mau if mau else None,
        "features_used_30d": len(features),
        "feature_adoption": len(features & set(KEY_FEATURES)) / len(KEY_FEATURES),
        "touchpoints_30d": len(comms),
        "active_stakeholders": len({e["contact_id"] for e in comms if e["direction"] == "inbound"}),
        "time_in_product_minutes": sessions / mau if mau else None,
        "nps": nps,
    }


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-6
    return bool(a == b)


def mismatches(expected: dict[str, Any], got: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (v, got.get(k)) for k, v in expected.items() if not _close(v, got.get(k))}


@dataclass
class Client:
    """Posts batches to ``POST /v1/events`` like a careful integration: a request that
    fails (connection refused or reset, 5xx) is resent with the same ids until it
    gets a 202. ``accepted`` holds every event that got a 202."""

    base_url: Callable[[], str]
    accepted: dict[str, Event] = field(default_factory=dict)
    statuses: Counter[str] = field(default_factory=Counter)
    resent_events: int = 0  # events resent because their request failed
    batches_done: int = 0

    async def post(self, http: httpx.AsyncClient, batch: list[Event], deadline: float) -> None:
        body = orjson.dumps({"events": batch})
        first = True
        while True:
            if not first:
                self.resent_events += len(batch)
            first = False
            try:
                r = await http.post(
                    f"{self.base_url()}/v1/events",
                    content=body,
                    headers=AUTH | {"Content-Type": "application/json"},
                )
                self.statuses[str(r.status_code)] += 1
                if r.status_code == 202:
                    assert r.json() == {"accepted": len(batch)}
                    self.accepted |= {str(e["id"]): e for e in batch}
                    self.batches_done += 1
                    return
                assert r.status_code == 503 or r.status_code >= 500, (r.status_code, r.text)
            except httpx.TransportError as exc:
                self.statuses[type(exc).__name__] += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"no 202 before the deadline; answers {dict(self.statuses)}")
            await asyncio.sleep(0.2)


async def account_kpis(http: httpx.AsyncClient, scoring_url: str, account: str) -> Any:
    """(as_of, kpis) from the read API, or None while the account is unknown or the
    service is restarting."""
    try:
        r = await http.get(f"{scoring_url}/v1/accounts/{account}/health", headers=AUTH)
    except httpx.TransportError:
        return None
    if r.status_code != 200:
        return None
    body = r.json()
    return date.fromisoformat(body["as_of"]), body["kpis"]


async def kpi_mismatches(
    http: httpx.AsyncClient, scoring_url: str, events: list[Event], accounts: list[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for acct in accounts:
        got = await account_kpis(http, scoring_url, acct)
        if got is None:
            out[acct] = "not scored"
            continue
        as_of, kpis = got
        diff = mismatches(oracle(events, acct, as_of), kpis)
        if diff:
            out[acct] = diff
    return out


async def wait_for_oracle(
    scoring_url: Callable[[], str], events: list[Event], accounts: list[str], timeout: float
) -> dict[str, Any]:
    """Poll until every account's KPIs equal the oracle; returns the last mismatches
    ({} on success)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            diff = await kpi_mismatches(http, scoring_url(), events, accounts)
            if not diff or time.monotonic() > deadline:
                return diff
            await asyncio.sleep(0.5)


@dataclass
class WebhookTally:
    """What the receivers got, per subscription (the receiver's path)."""

    requests: int
    distinct: dict[str, set[str]]  # path → distinct webhook-ids
    alerts: dict[str, Counter[str]]  # path → alert_id → distinct webhook-ids
    accounts: dict[str, set[str]]  # path → accounts alerted

    @classmethod
    def of(cls, receiver: Receiver) -> WebhookTally:
        distinct: dict[str, set[str]] = defaultdict(set)
        per_alert: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        accounts: dict[str, set[str]] = defaultdict(set)
        for req in receiver.requests:
            wid = req.headers["webhook-id"]
            distinct[req.path].add(wid)
            data = orjson.loads(req.body)["data"]
            per_alert[req.path][data["alert_id"]].add(wid)
            accounts[req.path].add(data["account_id"])
        return cls(
            len(receiver.requests),
            dict(distinct),
            {p: Counter({a: len(w) for a, w in d.items()}) for p, d in per_alert.items()},
            dict(accounts),
        )

    def delivered(self) -> int:
        return sum(len(ids) for ids in self.distinct.values())


async def subscribe(alerts_url: str, url: str) -> dict[str, Any]:
    """A subscription to the alert the plan makes fire (alert.fired of ALERT_RULE)."""
    async with httpx.AsyncClient(timeout=10, headers=AUTH) as http:
        r = await http.post(
            f"{alerts_url}/v1/webhooks",
            json={
                "url": url,
                "event_types": ["alert.fired"],
                "filters": {"rule_ids": [ALERT_RULE]},
            },
        )
    assert r.status_code == 201, r.text
    return dict(r.json())


async def wait_for_webhooks(receiver: Receiver, expected: int, timeout: float) -> WebhookTally:
    """Wait until ``expected`` distinct webhook-ids arrived in all, then a moment more
    (a duplicate or an extra alert would arrive now)."""
    await until(lambda: WebhookTally.of(receiver).delivered() >= expected, timeout)
    await asyncio.sleep(1.5)
    return WebhookTally.of(receiver)


async def until(condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(poll)


def record_figures(section: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` under ``section`` into test-artifacts/reliability-figures.json
    (the numbers the README's Guarantees section quotes)."""
    path = ARTIFACTS / "reliability-figures.json"
    ARTIFACTS.mkdir(exist_ok=True)
    current: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            current = orjson.loads(path.read_bytes())
    current[section] = {"recorded_at": datetime.now(UTC).isoformat(timespec="seconds")} | figures
    path.write_bytes(orjson.dumps(current, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
