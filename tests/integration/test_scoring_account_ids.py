"""Account ids are any 1–128 characters (SPEC §3): ids holding "/", "?", "#", "%",
spaces or non-ASCII are readable through every read route (SPEC §6) and the
dashboard when the client percent-encodes them, and every link the dashboard
renders leads back to the same account. Real broker and database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from html import unescape
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from markupsafe import escape

from services.scoring.dashboard import routes
from tests.infra import BOOTSTRAP_KEY
from tests.integration.scoring_support import Stack, running_stack, scoring_app

D = date(2026, 3, 31)
NOW = datetime(2026, 3, 31, 15, 0, tzinfo=UTC)
AWKWARD = {
    "slash": "org/123",
    "question-mark": "what?now",
    "hash": "tag#1",
    "percent": "50%off",
    "space": "with space",
    "unicode": "ünï/cødé 東京",
    "edge-slashes": "/lead//trail/",
    "dot-segments": "../../v1/accounts",
    "everything": "a/b?c=d&e#f%2Fg h",
    "route-suffix": "team/health",
    "prefix-of-another": "team",
}
IDS = list(AWKWARD.values())
EACH_ID = [pytest.param(v, id=k) for k, v in AWKWARD.items()]
READS = {
    "health": {},
    "history": {"days": 30},
    "changes": {"from": D.isoformat(), "to": D.isoformat()},
    "stakeholders": {"weeks": 4},
}


def url(account_id: str, read: str) -> str:
    return f"/v1/accounts/{quote(account_id, safe='')}/{read}"


@pytest.fixture(scope="module")
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(env, NOW) as s:
        e = s.event
        events = []
        for n, account in enumerate(IDS):
            events += [
                e("account_updated", account, D - timedelta(days=9), seats_purchased=n + 1),
                e("login", account, D - timedelta(days=n), user_id=f"{account}/u"),
                e(
                    "communication",
                    account,
                    D - timedelta(days=2),
                    channel="email",
                    direction="inbound",
                    contact_id=f"{account}?c#1",
                ),
            ]
        await s.send(events)
        await s.wait_consumed()
        yield s


@pytest.fixture(scope="module")
async def app(stack: Stack) -> AsyncIterator[FastAPI]:
    """The scoring app on the module's pool, with its dashboard's data."""
    from services.scoring.dashboard.data import ReadModelData

    async with scoring_app(stack) as app, httpx.AsyncClient() as http:
        app.state.dashboard = ReadModelData(stack.pool, stack.clock, (70.0, 40.0), None, None, http)
        yield app


@pytest.fixture(scope="module")
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://scoring",
        headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A person logged in to the dashboard (session cookie, no API key)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://scoring.test",
    ) as client:
        r = await client.post("/login", data={"key": BOOTSTRAP_KEY, "next": "/"})
        assert r.status_code == 303, r.text
        yield client


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("account_id", EACH_ID)
async def test_every_read_route_answers_for_a_percent_encoded_id(
    api: httpx.AsyncClient, account_id: str, read: str
) -> None:
    r = await api.get(url(account_id, read), params=READS[read])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == account_id
    if read == "health":
        assert body["kpis"]["mau"] == 1
    elif read == "history":
        assert [h["day"] for h in body["history"]] == [D.isoformat()]
    elif read == "stakeholders":
        assert [c["contact_id"] for c in body["contacts"]] == [f"{account_id}?c#1"]


@pytest.mark.parametrize(
    ("path", "account_id"),
    [
        pytest.param("/v1/accounts/org/123/health", "org/123", id="slash"),
        pytest.param("/v1/accounts/team/health/health", "team/health", id="suffix-then-route"),
        pytest.param("/v1/accounts/team/health/history", "team/health", id="suffix-other-route"),
        pytest.param("/v1/accounts/team/history", "team", id="shorter-id"),
        pytest.param("/v1/accounts/org%2F123/stakeholders", "org/123", id="mixed"),
    ],
)
async def test_an_unencoded_slash_is_read_where_the_route_suffix_settles_it(
    api: httpx.AsyncClient, path: str, account_id: str
) -> None:
    r = await api.get(path)
    assert r.status_code == 200, r.text
    assert r.json()["account_id"] == account_id


@pytest.mark.parametrize("read", list(READS))
@pytest.mark.parametrize("account_id", ["no/such", "org/123/", "org", "what", "50%25off", "ü"])
async def test_unknown_ids_get_the_json_404(
    api: httpx.AsyncClient, account_id: str, read: str
) -> None:
    r = await api.get(url(account_id, read), params=READS[read])
    assert r.status_code == 404
    assert r.json() == {"detail": f"unknown account {account_id!r}"}


async def test_bad_parameters_on_an_awkward_id_still_get_a_precise_422(
    api: httpx.AsyncClient,
) -> None:
    r = await api.get(url("org/123", "history"), params={"days": 0})
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "query.days"
    long = await api.get(url("a/" + "b" * 127, "health"))
    assert long.status_code == 422
    assert long.json()["errors"][0]["field"] == "path.account_id"


async def test_the_list_pages_through_every_id_once(api: httpx.AsyncClient) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(len(IDS) + 1):
        params = {"sort": "name", "limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (await api.get("/v1/accounts", params=params)).json()
        seen += [a["account_id"] for a in page["accounts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(IDS)


def _account_links(html: str) -> list[str]:
    return [unescape(h) for h in re.findall(r'href="(/accounts/[^"]*)"', html)]


async def test_dashboard_list_links_open_each_account(
    browser: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes, "PAGE_SIZE", 4)  # several pages, so cursors are followed
    links: list[str] = []
    page: str | None = "/?sort=name"
    pages = 0
    while page is not None:
        r = await browser.get(page)
        assert r.status_code == 200, r.text
        links += _account_links(r.text)
        pages += 1
        nxt = re.search(r'<a href="([^"]*)" rel="next"', r.text)
        page = unescape(nxt.group(1)) if nxt else None
    assert pages == 3
    assert sorted(links) == sorted(f"/accounts/{quote(a, safe='')}" for a in IDS)
    for link in links:
        r = await browser.get(link)
        assert r.status_code == 200, (link, r.text)
        account_id = next(a for a in IDS if link == f"/accounts/{quote(a, safe='')}")
        assert f"<h1>{_escaped(account_id)} " in r.text
        # the "why did it move?" form submits to this same account
        assert f'action="{link}"' in r.text
        compared = await browser.get(link, params={"from": D.isoformat(), "to": D.isoformat()})
        assert compared.status_code == 200 and 'id="changes"' in compared.text


def _escaped(text: str) -> str:
    return str(escape(text))


@pytest.mark.parametrize("account_id", EACH_ID)
async def test_dashboard_login_returns_to_the_same_account(app: FastAPI, account_id: str) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://scoring.test",
    ) as anonymous:
        r = await anonymous.get(f"/accounts/{quote(account_id, safe='')}")
        assert r.status_code == 303 and r.headers["location"].startswith("/login?")
        target = parse_qs(urlsplit(r.headers["location"]).query)["next"][0]
        login = await anonymous.post("/login", data={"key": BOOTSTRAP_KEY, "next": target})
        assert login.status_code == 303
        page = await anonymous.get(login.headers["location"])
        assert page.status_code == 200, page.text
        assert f"<h1>{_escaped(account_id)} " in page.text


@pytest.mark.parametrize("account_id", ["no/such", "org/123/", "what"])
async def test_dashboard_unknown_account_is_a_404(
    browser: httpx.AsyncClient, account_id: str
) -> None:
    r = await browser.get(f"/accounts/{quote(account_id, safe='')}")
    assert r.status_code == 404
    assert "<h1>Unknown account</h1>" in r.text
    assert f"<code>{_escaped(account_id)}</code>" in r.text
