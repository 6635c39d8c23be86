"""Window maths (hypothesis): the bucketed aggregates equal brute force over raw events,
and the batch fold is order-independent where SPEC §4 says it must be."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from services.scoring import windows
from services.scoring.buckets import DAY_INDEX, fold
from shared.events import EVENT_ADAPTER

D = date(2026, 4, 30)
days = st.integers(min_value=0, max_value=60).map(lambda n: D - timedelta(days=n))
activity = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3", "u4"]), days), max_size=60)


def test_window_bounds() -> None:
    assert windows.window_bounds(D, 7) == (date(2026, 4, 24), D)
    assert windows.in_window(date(2026, 4, 1), D, 30)
    assert not windows.in_window(date(2026, 3, 31), D, 30)
    assert not windows.in_window(date(2026, 5, 1), D, 30)


@given(activity)
def test_distinct_counts_nest(act: list[tuple[str, date]]) -> None:
    dau = windows.distinct_in_window(act, D, 1)
    wau = windows.distinct_in_window(act, D, 7)
    mau = windows.distinct_in_window(act, D, 30)
    assert dau <= wau <= mau <= 4
    # Σ daily distinct over 30 days is between mau and 30·mau (stickiness in (0, 1])
    total = windows.daily_distinct_sum(act, D, 30)
    assert mau <= total <= 30 * mau


@given(activity)
def test_daily_distinct_sum_is_per_day_brute_force(act: list[tuple[str, date]]) -> None:
    brute = sum(len({u for u, d in act if d == D - timedelta(days=i)}) for i in range(30))
    assert windows.daily_distinct_sum(act, D, 30) == brute


@given(st.dictionaries(days, st.floats(min_value=0, max_value=1e4), max_size=40))
def test_window_sum_equals_sum_of_the_days_inside(buckets: dict[date, float]) -> None:
    inside = [v for d, v in buckets.items() if (D - d).days < 30]
    assert abs(windows.window_sum(buckets, D, 30) - sum(inside)) < 1e-6


@given(st.lists(days, max_size=20))
def test_last_day_ignores_days_after_the_evaluation_day(seen: list[date]) -> None:
    got = windows.last_day_on_or_before([*seen, D + timedelta(days=3)], D)
    assert got == (max(seen) if seen else None)


def _ev(i: int, day: date, **kw: object) -> object:
    body = {
        "id": f"e{i}",
        "account_id": "a",
        "timestamp": datetime.combine(day, datetime.min.time(), tzinfo=UTC).isoformat(),
        "received_at": "2026-04-30T00:00:00+00:00",
    } | kw
    return EVENT_ADAPTER.validate_python(body)


@given(
    st.lists(
        st.tuples(days, st.sampled_from(["u1", "u2"]), st.integers(1, 600)), min_size=1, max_size=30
    ),
    st.randoms(),
)
def test_fold_totals_do_not_depend_on_event_order(
    sessions: list[tuple[date, str, int]], rnd: object
) -> None:
    evs = [
        _ev(i, d, type="session", user_id=u, duration_seconds=s)
        for i, (d, u, s) in enumerate(sessions)
    ]
    shuffled = list(evs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = fold(evs), fold(shuffled)  # type: ignore[arg-type]
    assert a.user_days == b.user_days
    seconds = DAY_INDEX["session_seconds"]
    assert {k: round(v[seconds], 6) for k, v in a.days.items()} == {
        k: round(v[seconds], 6) for k, v in b.days.items()
    }
    assert a.last_event_day == b.last_event_day == {"a": max(d for d, _, _ in sessions)}


def test_latest_attribute_by_timestamp_wins_within_a_batch() -> None:
    newer = _ev(1, D, type="account_updated", seats_purchased=10)
    older = _ev(2, D - timedelta(days=3), type="account_updated", seats_purchased=99, plan="pro")
    out = fold([newer, older])  # type: ignore[list-item]
    assert out.accounts["a"].values["seats_purchased"][1] == 10
    assert out.accounts["a"].values["plan"][1] == "pro"  # only fields that were set count
    assert "name" not in out.accounts["a"].values


_mixed = st.lists(
    st.one_of(
        st.tuples(st.just("login"), days, st.sampled_from(["u1", "u2"])),
        st.tuples(st.just("feature_used"), days, st.sampled_from(["f1", "f2"])),
        st.tuples(st.just("communication"), days, st.sampled_from(["inbound", "outbound"])),
        st.tuples(st.just("account_updated"), days, st.integers(0, 50)),
        st.tuples(st.just("contact_updated"), days, st.sampled_from(["champion", "user"])),
    ),
    max_size=30,
)


def _mixed_event(i: int, kind: str, day: date, x: object) -> object:
    extra: dict[str, object] = {
        "login": {"user_id": x},
        "feature_used": {"user_id": "u1", "feature": x},
        "communication": {"channel": "email", "direction": x, "contact_id": "c1"},
        "account_updated": {"seats_purchased": x},
        "contact_updated": {"contact_id": "c1", "role": x},
    }[kind]
    return _ev(i, day, type=kind, **extra)


@given(_mixed, st.integers(0, 30))
def test_a_batch_folded_in_parts_is_the_batch_folded_at_once(
    kinds: list[tuple[str, date, object]], cut: int
) -> None:
    """The consumer folds a batch in parts (yielding to the event loop in between):
    every delta, attribute updates included, is what one fold of it gives."""
    evs = [_mixed_event(i, *k) for i, k in enumerate(kinds)]
    whole = fold(evs)  # type: ignore[arg-type]
    parts = fold(evs[:cut])  # type: ignore[arg-type]
    assert fold(evs[cut:], into=parts) is parts  # type: ignore[arg-type]
    assert parts == whole
