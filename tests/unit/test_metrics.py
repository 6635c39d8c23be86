"""shared.metrics.observe_many exposes exactly what repeated observe() does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from shared.metrics import LATENCY_BUCKETS, observe_many


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    a, b = CollectorRegistry(), CollectorRegistry()
    ha = Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=a)
    hb = Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=b)
    return a, ha, b, hb


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100, allow_nan=False)
            | st.sampled_from(LATENCY_BUCKETS),  # on a bucket's bound: that bucket
            st.integers(min_value=1, max_value=50),
        ),
        max_size=20,
    )
)
def test_observe_many_equals_repeated_observe(observations: list[tuple[float, int]]) -> None:
    a, one_by_one, b, many = _pair()
    for amount, count in observations:
        for _ in range(count):
            one_by_one.observe(amount)
        observe_many(many, amount, count)
    got = generate_latest(b).decode().splitlines()
    want = generate_latest(a).decode().splitlines()
    # _sum may differ in the last float digits (one product vs repeated additions)
    assert [x for x in got if "_sum" not in x and "_created" not in x] == [
        x for x in want if "_sum" not in x and "_created" not in x
    ]
    sum_got = sum(float(x.split()[-1]) for x in got if x.startswith("t_seconds_sum"))
    sum_want = sum(float(x.split()[-1]) for x in want if x.startswith("t_seconds_sum"))
    assert abs(sum_got - sum_want) <= 1e-9 * max(1.0, sum_want)
