"""Read Prometheus text exposition from a service and compute what the bench needs."""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    return sum(
        v
        for lab, v in samples.get(name, [])
        if all(lab.get(k) == want for k, want in labels.items())
    )


def quantile(
    samples: dict[str, list[tuple[dict[str, str], float]]], histogram: str, q: float
) -> float:
    """histogram_quantile over cumulative buckets (linear inside a bucket), as
    Prometheus computes it. NaN when the histogram is empty."""
    buckets = sorted(
        ((float(lab["le"]), v) for lab, v in samples.get(f"{histogram}_bucket", [])),
        key=lambda b: b[0],
    )
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 0)
        prev_le, prev_count = le, count
    return prev_le


def delta(
    after: dict[str, list[tuple[dict[str, str], float]]],
    before: dict[str, list[tuple[dict[str, str], float]]],
) -> dict[str, list[tuple[dict[str, str], float]]]:
    """What happened between two scrapes (counters and histogram buckets)."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, samples in after.items():
        was = {tuple(sorted(lab.items())): v for lab, v in before.get(name, [])}
        out[name] = [(lab, v - was.get(tuple(sorted(lab.items())), 0.0)) for lab, v in samples]
    return out
