"""The day a contact became champion (what ``champion_silence_days`` counts from
while the champion never wrote in) must not depend on how events fall into
batches: a CRM that re-sends ``role: champion`` on every sync keeps the day of
the first one, a role that left ``champion`` and came back starts a new day, and
a late (older) role event changes nothing. Reference: the events applied one by
one, in the order received, as SPEC §4 defines attributes (the latest by
timestamp wins; ties: the later-processed one)."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.scoring import store
from services.scoring.buckets import fold
from shared.events import EVENT_ADAPTER
from tests.integration.scoring_support import settings_from

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)
Offer = tuple[str, datetime, str]  # contact, timestamp, role


def _event(n: int, account: str, offer: Offer) -> Any:
    contact, ts, role = offer
    return EVENT_ADAPTER.validate_python(
        {
            "id": f"{account}-{n}",
            "type": "contact_updated",
            "account_id": account,
            "contact_id": contact,
            "role": role,
            "timestamp": ts.isoformat(),
            "received_at": (T0 + timedelta(days=60)).isoformat(),
        }
    )


def _one_by_one(offers: list[Offer]) -> dict[str, tuple[str | None, date | None]]:
    """role and became-champion day per contact, the events applied one at a time."""
    state: dict[str, tuple[str | None, datetime | None, date | None]] = {}
    for contact, ts, role in offers:
        held, held_at, became = state.get(contact, (None, None, None))
        if held_at is None or ts >= held_at:
            if role != "champion":
                became = None
            elif held != "champion":
                became = ts.astimezone(UTC).date()
            state[contact] = (role, ts, became)
    return {c: (r, d) for c, (r, _, d) in state.items()}


async def _apply(pg: Any, account: str, batches: list[list[Offer]]) -> None:
    n = 0
    for batch in batches:
        events = []
        for offer in batch:
            n += 1
            events.append(_event(n, account, offer))
        async with pg.transaction():
            await store.apply_deltas(pg, store.window_statements(fold(events)))


async def _stored(pg: Any, account: str) -> dict[str, tuple[str | None, date | None]]:
    rows = await pg.fetch(
        "SELECT contact_id, role, became_champion_day FROM scoring_contacts WHERE account_id = $1",
        account,
    )
    return {r["contact_id"]: (r["role"], r["became_champion_day"]) for r in rows}


def _day(n: int, hour: int = 9) -> datetime:
    return T0 + timedelta(days=n, hours=hour - 9)


# (offers in the order received, the became-champion day one by one)
CASES: list[tuple[str, list[Offer], date | None]] = [
    (
        "a re-sent champion keeps its first day",
        [("c", _day(0), "champion"), ("c", _day(4), "champion")],
        date(2026, 3, 1),
    ),
    (
        "a role that left champion and came back starts again",
        [("c", _day(0), "champion"), ("c", _day(2), "user"), ("c", _day(4), "champion")],
        date(2026, 3, 5),
    ),
    (
        "a late champion (older than the role held) changes nothing",
        [("c", _day(4), "user"), ("c", _day(1), "champion"), ("c", _day(6), "champion")],
        date(2026, 3, 7),
    ),
    (
        "a late role that is not champion does not break the run",
        [("c", _day(2), "champion"), ("c", _day(1), "user"), ("c", _day(5), "champion")],
        date(2026, 3, 3),
    ),
    (
        "a champion run that starts before the role held and goes on after it",
        [("c", _day(5), "user"), ("c", _day(3), "champion"), ("c", _day(7), "champion")],
        date(2026, 3, 8),
    ),
]


def _splits(n: int) -> list[list[int]]:
    """Every way to cut n events into consecutive batches (as batch sizes)."""
    if n == 0:
        return [[]]
    return [[k, *rest] for k in range(1, n + 1) for rest in _splits(n - k)]


async def test_became_champion_day_is_the_same_whatever_the_batches(
    env: dict[str, str],
) -> None:
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg:
            for i, (what, offers, want) in enumerate(CASES):
                assert _one_by_one(offers)["c"][1] == want, what  # the reference itself
                for j, sizes in enumerate(_splits(len(offers))):
                    account = f"case{i}-split{j}"
                    batches, at = [], 0
                    for k in sizes:
                        batches.append(offers[at : at + k])
                        at += k
                    await _apply(pg, account, batches)
                    assert (await _stored(pg, account))["c"][1] == want, (what, sizes)
    finally:
        await pool.close()


async def test_random_role_histories_match_one_by_one_in_any_batches(
    env: dict[str, str],
) -> None:
    """Several contacts, roles mostly in time order with some late events and ties,
    cut into random batches: role and day equal the one-by-one reference."""
    rnd = random.Random(7)
    pool = await store.create_pool(settings_from(env).database_url, size=1)
    try:
        async with pool.acquire() as pg:
            for story in range(40):
                offers: list[Offer] = []
                clock = {c: 0.0 for c in ("c1", "c2", "c3")}
                for _ in range(rnd.randrange(2, 14)):
                    contact = rnd.choice(list(clock))
                    step = rnd.choice([0.0, 0.5, 1.0, 1.0, 2.0, 3.0, -1.5, -4.0])
                    clock[contact] += step
                    ts = T0 + timedelta(days=clock[contact])
                    role = rnd.choice(["champion", "champion", "champion", "user", "other"])
                    offers.append((contact, ts, role))
                want = _one_by_one(offers)
                for cut in range(3):
                    account, batches, rest = f"story{story}-{cut}", [], list(offers)
                    while rest:
                        k = rnd.randrange(1, len(rest) + 1)
                        batches.append(rest[:k])
                        rest = rest[k:]
                    await _apply(pg, account, batches)
                    assert await _stored(pg, account) == want, (offers, [len(b) for b in batches])
    finally:
        await pool.close()
