"""The product as a CSM sees it: a shortened demo goes through the real stack
(ingest → broker → scoring → alerts, separate processes); its stories end in the
expected bands and alerts; then a person logs in to the dashboard in headless
Chromium, filters to red, opens an account and sees its explanation, history and
relationship heatmap. Screenshots land in test-artifacts/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from bench.prom import scrape, total
from services.demo import build_stories, send
from tests.infra import ARTIFACTS, BOOTSTRAP_KEY, ServiceProcess, running

AUTH = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# One account per story keeps the test short; the full demo has ~25.
PICK = (
    "healthy-1",
    "healthy-2",
    "shelfware-1",
    "went-quiet-1",
    "quiet-champion-1",
    "champion-left-1",
    "detractor-1",
    "trial-1",
    "poc-1",
)


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    procs = {n: ServiceProcess(n, env) for n in ("ingest", "alerts")}
    procs["scoring"] = ServiceProcess("scoring", env)
    # the dashboard asks the alerts service; tell scoring where it is
    with running(procs["ingest"], procs["alerts"]):
        procs["scoring"].env = env | {"HEALTHSCORE_ALERTS_URL": procs["alerts"].url}
        with running(procs["scoring"]):
            yield procs


@pytest.fixture(scope="module")
def demo(stack: dict[str, ServiceProcess]) -> dict[str, dict[str, object]]:
    stories = [s for s in build_stories(datetime.now(UTC)) if s.account_id in PICK]
    events = sorted((e for s in stories for e in s.events), key=lambda e: str(e["timestamp"]))
    assert send(events, stack["ingest"].url, BOOTSTRAP_KEY) == len(events)
    deadline = time.monotonic() + 240
    applied = 0.0
    while time.monotonic() < deadline:
        applied = total(
            scrape(stack["scoring"].url), "healthscore_scoring_events_total", outcome="applied"
        )
        if applied >= len(events):
            break
        time.sleep(1)
    assert applied >= len(events), f"scoring applied {applied} of {len(events)} events"
    # a backfill changes past windows; rescore turns them into daily history (sparklines)
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "rescore", "--days", "90"],
        env=os.environ | stack["scoring"].env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    accounts = httpx.get(f"{stack['scoring'].url}/v1/accounts?limit=100", headers=AUTH).json()
    return {a["account_id"]: a for a in accounts["accounts"]}


@pytest.mark.parametrize(
    ("account", "band"),
    [
        ("healthy-1", "green"),
        ("healthy-2", "green"),
        ("went-quiet-1", "red"),
        ("detractor-1", "yellow"),  # still engaged, but every voice measure is at zero
    ],
)
def test_demo_story_ends_in_the_expected_band(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]], account: str, band: str
) -> None:
    if demo[account]["band"] != band:
        h = httpx.get(f"{stack['scoring'].url}/v1/accounts/{account}/health", headers=AUTH)
        pytest.fail(f"{account}: {demo[account]['band']}, expected {band}; {h.json()}")


def test_grace_period_accounts_are_flagged(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]]
) -> None:
    for account in ("trial-1", "poc-1"):
        h = httpx.get(f"{stack['scoring'].url}/v1/accounts/{account}/health", headers=AUTH).json()
        assert h["in_grace_period"] is True, h


@pytest.mark.parametrize(
    ("account", "rule"),
    [
        ("shelfware-1", "low-license-utilization"),
        ("went-quiet-1", "product-inactive"),
        ("quiet-champion-1", "champion-silent"),
        ("champion-left-1", "champion-left"),
        ("detractor-1", "negative-nps"),
    ],
)
def test_demo_story_fires_its_alert(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]], account: str, rule: str
) -> None:
    fired: set[str] = set()
    for _ in range(60):  # alerts follow scoring's snapshots within a few seconds
        r = httpx.get(
            f"{stack['alerts'].url}/v1/alerts", params={"account_id": account}, headers=AUTH
        )
        fired = {a["rule"]["id"] for a in r.json()["alerts"] if a["status"] == "open"}
        if rule in fired:
            break
        time.sleep(0.5)
    assert rule in fired, f"{account}: open alerts {sorted(fired)}"


def test_no_healthy_account_alerts(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]]
) -> None:
    r = httpx.get(
        f"{stack['alerts'].url}/v1/alerts",
        params={"account_id": ["healthy-1", "healthy-2"], "status": "open"},
        headers=AUTH,
    )
    assert r.json()["alerts"] == []


def test_pages_need_a_login(stack: dict[str, ServiceProcess]) -> None:
    base = stack["scoring"].url
    for path in ("/", "/accounts/healthy-1"):
        r = httpx.get(base + path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
    bad = httpx.post(f"{base}/login", data={"key": "hs_wrong", "next": "/"})
    assert bad.status_code == 401 and "Unknown or revoked key" in bad.text


def test_pages_render_without_javascript(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]]
) -> None:
    with httpx.Client(base_url=stack["scoring"].url) as client:
        r = client.post(
            "/login", data={"key": BOOTSTRAP_KEY, "next": "/?band=red"}, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == "/?band=red"
        page = client.get("/?band=red").text
        assert "went-quiet-1" in page and "healthy-1" not in page
        detail = client.get("/accounts/detractor-1").text
        for section in ('id="measures"', 'id="history"', 'id="heatmap"', 'id="alerts"'):
            assert section in detail
        assert "negative-nps" in detail or "NPS" in detail


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it",
)
def test_csm_journey_in_a_real_browser(
    stack: dict[str, ServiceProcess], demo: dict[str, dict[str, object]]
) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "chromium is missing in CI"
    ARTIFACTS.mkdir(exist_ok=True)
    base = stack["scoring"].url
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            assert "/login" in page.url
            page.fill("#key", BOOTSTRAP_KEY)
            page.click("button[type=submit]")
            page.wait_for_selector("#accounts")
            assert page.locator("#accounts tbody tr").count() >= len(PICK)
            assert page.locator("#accounts svg.spark path").count() >= 3
            page.screenshot(path=str(ARTIFACTS / "dashboard-accounts.png"), full_page=True)

            page.select_option("select[name=band]", "red")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**band=red**")
            bands = page.locator("#accounts tbody tr").evaluate_all(
                "rows => rows.map(r => r.dataset.band)"
            )
            assert bands and set(bands) == {"red"}
            page.screenshot(path=str(ARTIFACTS / "dashboard-red.png"), full_page=True)

            page.click("a[href='/accounts/went-quiet-1']")
            page.wait_for_selector("#measures")
            assert page.locator("#measures tbody tr").count() >= 5
            assert page.locator("svg[aria-label='score explanation by measure'] rect").count() > 5
            assert page.locator("#history svg circle").count() >= 10
            assert page.locator("#heatmap svg rect").count() > 10
            assert page.locator("#trends svg path").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "dashboard-account.png"), full_page=True)
        finally:
            browser.close()
