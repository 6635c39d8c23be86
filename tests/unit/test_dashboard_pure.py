"""Dashboard pure parts: session cookies, SVG charts, demo stories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import unquote, urlsplit

import orjson
import pytest

from services.demo import HISTORY_DAYS, build_stories
from services.scoring.dashboard import charts, session
from services.scoring.dashboard.routes import account_path
from shared.events import EVENT_LIST_ADAPTER

SECRET = b"s" * 32


def test_session_round_trip_and_expiry() -> None:
    token = session.issue(SECRET, "digest", now=1000, lifetime=60)
    assert session.read(SECRET, token, now=1059) == "digest"
    assert session.read(SECRET, token, now=1061) is None


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda t: t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1], id="signature"),
        pytest.param(lambda t: "e30" + t[3:], id="payload"),
        pytest.param(lambda t: t.replace(".", ""), id="no-dot"),
        pytest.param(lambda t: "", id="empty"),
    ],
)
def test_tampered_session_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    assert session.read(SECRET, tamper(session.issue(SECRET, "digest"))) is None


def test_session_signed_with_another_secret_is_refused() -> None:
    assert session.read(b"other" * 8, session.issue(SECRET, "digest")) is None


@pytest.mark.parametrize(
    ("account_id", "path"),
    [
        pytest.param("acme", "/accounts/acme", id="plain"),
        pytest.param("org/123", "/accounts/org%2F123", id="slash"),
        pytest.param("a?b#c", "/accounts/a%3Fb%23c", id="query-and-fragment"),
        pytest.param("50%off", "/accounts/50%25off", id="percent"),
        pytest.param("a b", "/accounts/a%20b", id="space"),
        pytest.param("ü", "/accounts/%C3%BC", id="unicode"),
        pytest.param("../x", "/accounts/..%2Fx", id="dot-segments"),
    ],
)
def test_account_links_carry_the_id_as_one_encoded_segment(account_id: str, path: str) -> None:
    assert account_path(account_id) == path
    parts = urlsplit(path)
    assert (parts.query, parts.fragment) == ("", "")
    assert unquote(parts.path.removeprefix("/accounts/")) == account_id


def test_sparkline_draws_gaps_and_says_when_empty() -> None:
    svg = charts.sparkline([50, 60, None, 70, 80], band="green")
    assert svg.count("M") == 2 and charts.BAND_COLOURS["green"] in svg
    assert "not enough data" in charts.sparkline([None, 40])


def test_history_chart_has_band_zones_and_points() -> None:
    pts = [charts.Point(f"2026-11-{d:02d}", float(d * 3)) for d in range(1, 11)]
    svg = charts.history_chart(pts, green=70, yellow=40)
    assert svg.count("<rect") == 3  # red, yellow, green zones
    assert svg.count("<circle") == 10
    assert "2026-11-01" in svg and "2026-11-10" in svg


def test_explanation_bars_escape_labels() -> None:
    svg = charts.explanation_bars([charts.Bar("<nps>", 10, 5, "a & b")])
    assert "<nps>" not in svg and "&lt;nps&gt;" in svg and "a &amp; b" in svg


def test_heatmap_marks_silent_stakeholders() -> None:
    svg = charts.heatmap(
        [
            charts.HeatRow("Ann", "★ champion", [0, 0], [1, 2]),
            charts.HeatRow("Bob", "", [3, 1], [0, 0]),
        ],
        ["2026-11-09", "2026-11-16"],
    )
    assert "Ann — ★ champion (silent)" in svg
    assert "Bob (silent)" not in svg


def test_demo_stories_are_valid_events_within_history() -> None:
    now = datetime(2026, 11, 22, 12, tzinfo=UTC)
    stories = build_stories(now)
    assert len(stories) >= 24
    assert len({s.account_id for s in stories}) == len(stories)
    for s in stories:
        EVENT_LIST_ADAPTER.validate_json(orjson.dumps(s.events))
        times = [datetime.fromisoformat(e["timestamp"]) for e in s.events]
        assert min(times) >= now - timedelta(days=HISTORY_DAYS + 1)
        assert max(times) <= now
    assert build_stories(now)[0].events == stories[0].events  # deterministic per seed
