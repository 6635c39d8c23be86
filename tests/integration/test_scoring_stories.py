"""Scripted multi-week stories per account, through the real broker and database:
every KPI equals the value computed by hand (SPEC §4)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import httpx
import orjson
import pytest

from tests.integration.scoring_support import Stack, running_stack, scoring_app

D = date(2026, 3, 31)
NOW = datetime(2026, 3, 31, 15, 0, tzinfo=UTC)


def ago(n: int) -> date:
    from datetime import timedelta

    return D - timedelta(days=n)


@pytest.fixture(scope="module")
async def stack(env: dict[str, str]) -> AsyncIterator[Stack]:
    async with running_stack(env, NOW) as s:
        await tell_stories(s)
        yield s


async def tell_stories(s: Stack) -> None:
    e = s.event
    growth = [
        e("account_updated", "growth", ago(60), seats_purchased=10, lifecycle_stage="active"),
        e("login", "growth", ago(33), user_id="u1"),
        e("login", "growth", ago(33), user_id="u2"),
        e("login", "growth", ago(20), user_id="u1"),
        e("session", "growth", ago(20), user_id="u1", duration_seconds=600),
        e("feature_used", "growth", ago(20), user_id="u1", feature="dashboard"),
        e("login", "growth", ago(3), user_id="u1"),
        e("login", "growth", ago(3), user_id="u2"),
        e("feature_used", "growth", ago(3), user_id="u2", feature="report", count=3),
        e("feature_used", "growth", ago(3), user_id="u3", feature="custom_thing"),
        e("session", "growth", ago(0), user_id="u4", duration_seconds=1200, id="dup-1"),
    ]
    decline = [
        e("contact_updated", "decline", ago(50), contact_id="c1", role="champion", name="Ann"),
        e(
            "communication",
            "decline",
            ago(45),
            channel="email",
            direction="inbound",
            contact_id="c1",
            sentiment=0.5,
        ),
        e(
            "communication",
            "decline",
            ago(40),
            channel="marketing",
            direction="outbound",
            contact_id="c2",
        ),
        e(
            "communication",
            "decline",
            ago(5),
            channel="meeting",
            direction="inbound",
            contact_id="c2",
            sentiment=-0.5,
        ),
        e(
            "communication",
            "decline",
            ago(2),
            channel="support_ticket",
            direction="inbound",
            contact_id="c2",
            escalation=True,
        ),
        e(
            "communication",
            "decline",
            ago(1),
            channel="email",
            direction="outbound",
            contact_id="c2",
        ),
        e(
            "communication",
            "decline",
            ago(10),
            channel="call",
            direction="inbound",
            contact_id="c3",
        ),
        e("contact_updated", "decline", ago(8), contact_id="c3", left_company=True),
        e("survey_response", "decline", ago(60), survey="nps", score=9, contact_id="c2"),
        e("survey_response", "decline", ago(20), survey="nps", score=3, contact_id="c3"),
        e("survey_response", "decline", ago(100), survey="nps", score=7, contact_id="c1"),
        e("survey_response", "decline", ago(15), survey="csat", score=2, contact_id="c1"),
    ]
    left = [
        e("account_updated", "left", ago(5), seats_purchased=20),
        e("contact_updated", "left", ago(30), contact_id="c9", role="champion"),
        e("communication", "left", ago(20), channel="chat", direction="inbound", contact_id="c9"),
        e("contact_updated", "left", ago(5), contact_id="c9", left_company=True),
    ]
    await s.send(growth + decline + left)
    await s.wait_consumed()
    # Second wave: late events, an exact resend (same id) and out-of-order updates.
    late = [
        e("login", "growth", ago(10), user_id="u6"),  # late: lands on D−10
        e("session", "growth", ago(0), user_id="u4", duration_seconds=1200, id="dup-1"),
        e("login", "growth", ago(3), user_id="u3"),  # u3 already active on D−3
        e("account_updated", "left", ago(10), seats_purchased=50),  # older: loses
        e("contact_updated", "left", ago(25), contact_id="c9", left_company=False),  # older
    ]
    await s.send(late)
    await s.wait_consumed()


async def test_growth_account_kpis(stack: Stack) -> None:
    h = await stack.health("growth")
    assert h["as_of"] == D
    assert h["kpis"] == {
        "dau": 1,  # u4
        "wau": 4,  # u1 u2 u3 (D−3), u4 (D)
        "mau": 5,  # + u6 (late, D−10); u1 also D−20
        "stickiness": pytest.approx((1 + 1 + 3 + 1) / 30 / 5),
        "license_utilization": 0.5,
        "feature_adoption": pytest.approx(2 / 5),  # dashboard, report of 5 key features
        "features_used_30d": 3,
        "time_in_product_minutes": pytest.approx((600 + 1200) / 60 / 5),  # resend not counted
        "days_since_last_activity": 0,
        "usage_trend": 2.0,  # wau 4 ÷ {u1, u2} on D−33
        "active_stakeholders": 0,
        "touchpoints_30d": 0,
        "days_since_last_inbound": None,
        "champion_silence_days": None,
        "champion_left": False,
        "nps": None,
        "sentiment": None,
        "support_tickets_30d": 0,
        "escalations_30d": 0,
    }


async def test_declining_relationship_kpis(stack: Stack) -> None:
    h = await stack.health("decline")
    assert h["kpis"] == {
        "dau": 0,
        "wau": 0,
        "mau": 0,
        "stickiness": None,
        "license_utilization": None,  # seats unknown
        "feature_adoption": 0.0,
        "features_used_30d": 0,
        "time_in_product_minutes": None,
        "days_since_last_activity": None,
        "usage_trend": None,
        "active_stakeholders": 1,  # c2; c3 wrote in but left the company
        "touchpoints_30d": 4,  # D−10, D−5, D−2, D−1 (marketing D−40 is outside)
        "days_since_last_inbound": 2,
        "champion_silence_days": 45,  # c1 last wrote on D−45
        "champion_left": False,
        "nps": 0.0,  # one promoter, one detractor in 90 days (D−100 is outside)
        "sentiment": -0.5,  # inbound with sentiment in 30 days: only D−5
        "support_tickets_30d": 1,
        "escalations_30d": 1,
    }


async def test_champion_left_and_latest_attribute_wins(stack: Stack) -> None:
    h = await stack.health("left")
    assert h["kpis"]["champion_left"] is True
    assert h["kpis"]["champion_silence_days"] is None
    assert h["kpis"]["active_stakeholders"] == 0  # c9 left: excluded
    assert h["kpis"]["touchpoints_30d"] == 1
    seats = await stack.pool.fetchval(
        "SELECT seats_purchased FROM scoring_accounts WHERE account_id = 'left'"
    )
    assert seats == 20  # the D−10 update arrived later but is older


async def test_score_carries_its_explanation(stack: Stack) -> None:
    h = await stack.health("growth")
    measures = h["measures"]
    assert h["model_version"] == stack.model.version
    applied = [m for m in measures if m["points"] is not None]
    assert sum(m["weight"] for m in applied) == pytest.approx(1.0, abs=1e-4)
    assert h["score"] == pytest.approx(sum(m["contribution"] for m in applied), abs=0.01)
    for m in applied:
        assert m["left_on_table"] == pytest.approx((100 - m["points"]) * m["weight"], abs=0.01)
    lic = next(m for m in measures if m["kpi"] == "license_utilization")
    assert lic["value"] == 0.5 and lic["points"] == pytest.approx(50.0)  # red 0.2, green 0.8
    assert h["band"] in ("green", "yellow", "red")


async def test_history_row_per_day_and_dedup_table(stack: Stack) -> None:
    rows = await stack.pool.fetch("SELECT account_id, day FROM scoring_days ORDER BY account_id")
    assert [(r["account_id"], r["day"]) for r in rows] == [
        ("decline", D),
        ("growth", D),
        ("left", D),
    ]


# ------------------------------------------------------------------ read API (SPEC §6)


@pytest.fixture(scope="module")
async def api(stack: Stack, env: dict[str, str]) -> AsyncIterator[httpx.AsyncClient]:
    from tests.infra import BOOTSTRAP_KEY

    async with (
        scoring_app(stack) as app,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://scoring",
            headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
        ) as client,
    ):
        yield client


async def test_api_health_has_the_spec_shape(api: httpx.AsyncClient, stack: Stack) -> None:
    r = await api.get("/v1/accounts/growth/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "account_id",
        "as_of",
        "score",
        "band",
        "score_delta_7d",
        "coverage",
        "model_version",
        "in_grace_period",
        "kpis",
        "measures",
    }
    assert body["as_of"] == D.isoformat() and body["kpis"]["mau"] == 5
    assert set(body["measures"][0]) == {
        "kpi",
        "value",
        "points",
        "weight",
        "contribution",
        "left_on_table",
    }
    assert (await api.get("/v1/accounts/nobody/health")).status_code == 404
    assert (
        await api.get("/v1/accounts/growth/health", headers={"Authorization": ""})
    ).status_code == 401


async def test_api_list_sorts_filters_and_pages(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/accounts", params={"sort": "name"})
    assert r.status_code == 200, r.text
    assert [a["account_id"] for a in r.json()["accounts"]] == ["decline", "growth", "left"]
    growth = next(a for a in r.json()["accounts"] if a["account_id"] == "growth")
    assert growth["last_activity_day"] == D.isoformat()
    first = await api.get("/v1/accounts", params={"sort": "-score", "limit": 2})
    page1 = first.json()
    assert len(page1["accounts"]) == 2 and page1["next_cursor"]
    second = await api.get(
        "/v1/accounts", params={"sort": "-score", "limit": 2, "cursor": page1["next_cursor"]}
    )
    page2 = second.json()
    assert len(page2["accounts"]) == 1 and page2["next_cursor"] is None
    ids = [a["account_id"] for a in page1["accounts"] + page2["accounts"]]
    assert sorted(ids) == ["decline", "growth", "left"]
    scores = [a["score"] for a in page1["accounts"] + page2["accounts"]]
    assert scores == sorted(scores, key=lambda s: -1e9 if s is None else s, reverse=True)
    band = page1["accounts"][0]["band"]
    filtered = (await api.get("/v1/accounts", params={"band": band})).json()["accounts"]
    assert filtered and all(a["band"] == band for a in filtered)
    assert (await api.get("/v1/accounts", params={"lifecycle_stage": "active"})).json()["accounts"][
        0
    ]["account_id"] == "growth"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        pytest.param({"sort": "colour"}, "query.sort", id="sort"),
        pytest.param({"band": "purple"}, "query.band", id="band"),
        pytest.param({"limit": "0"}, "query.limit", id="limit-low"),
        pytest.param({"limit": "9999"}, "query.limit", id="limit-high"),
        pytest.param({"cursor": "%%%"}, "query.cursor", id="cursor-garbage"),
    ],
)
async def test_api_list_rejects_bad_parameters_precisely(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    r = await api.get("/v1/accounts", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_api_cursor_of_another_sort_is_refused(api: httpx.AsyncClient) -> None:
    page = (await api.get("/v1/accounts", params={"sort": "name", "limit": 1})).json()
    r = await api.get("/v1/accounts", params={"sort": "score", "cursor": page["next_cursor"]})
    assert r.status_code == 422 and "another sort" in r.text


def _cursor(parts: list[object]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(parts)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("sort", "parts"),
    [
        pytest.param("score", ["score", None, None], id="no-key"),
        pytest.param("name", ["name", 5, {}], id="wrong-types"),
        pytest.param("score", ["score", True, "a"], id="boolean-key"),
        pytest.param("score", ["score", 3], id="too-short"),
    ],
)
async def test_api_crafted_cursors_are_refused_as_such(
    api: httpx.AsyncClient, sort: str, parts: list[object]
) -> None:
    """A cursor of the right sort but the wrong shape is not "of another sort"."""
    r = await api.get("/v1/accounts", params={"sort": sort, "cursor": _cursor(parts)})
    assert r.status_code == 422, r.text
    refused = {"field": "query.cursor", "message": "not a cursor from this API"}
    assert r.json()["errors"] == [refused]


async def test_api_stakeholders_heatmap(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/accounts/decline/stakeholders", params={"weeks": 8})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["weeks"]) == 8 and body["weeks"][-1] == "2026-03-30"  # Monday of D
    c = {x["contact_id"]: x for x in body["contacts"]}
    assert c["c1"]["role"] == "champion" and c["c1"]["name"] == "Ann"
    assert c["c1"]["last_inbound_day"] == ago(45).isoformat()
    assert c["c2"]["last_outbound_day"] == ago(1).isoformat()
    # D−5 (Thu 26 Mar) and D−2 (Sun 29 Mar) in the week of 23 Mar; D−1 outbound on Mon 30 Mar
    assert c["c2"]["inbound_per_week"][-2:] == [2, 0]
    assert c["c2"]["outbound_per_week"][-2:] == [0, 1]
    assert c["c3"]["left_company"] is True
    assert (
        await api.get("/v1/accounts/decline/stakeholders", params={"weeks": 0})
    ).status_code == 422
    assert (await api.get("/v1/accounts/ghost/stakeholders")).status_code == 404


async def test_api_history_and_changes_after_a_day_of_silence(
    api: httpx.AsyncClient, stack: Stack
) -> None:
    from datetime import timedelta

    from services.scoring.sweep import sweep_once

    stack.clock.advance(timedelta(days=1))
    assert await sweep_once(stack.settings, stack.pool, None, stack.model, stack.clock) == 3
    nxt = (D + timedelta(days=1)).isoformat()
    hist = (await api.get("/v1/accounts/growth/history", params={"days": 30})).json()
    assert [h["day"] for h in hist["history"]] == [D.isoformat(), nxt]
    assert hist["history"][1]["kpis"]["days_since_last_activity"] == 1
    r = await api.get("/v1/accounts/growth/changes", params={"from": D.isoformat(), "to": nxt})
    assert r.status_code == 200, r.text
    ch = r.json()
    assert ch["model_changed"] is False
    idle = next(m for m in ch["measures"] if m["kpi"] == "days_since_last_activity")
    assert (idle["value_from"], idle["value_to"]) == (0, 1)
    assert idle["contribution_delta"] == pytest.approx(
        idle["contribution_to"] - idle["contribution_from"], abs=1e-3
    )
    total = sum(m["contribution_delta"] for m in ch["measures"])
    assert ch["score_change"] == pytest.approx(total, abs=0.02)
    bad = await api.get("/v1/accounts/growth/changes", params={"from": nxt, "to": D.isoformat()})
    assert bad.status_code == 422
    assert (
        await api.get("/v1/accounts/growth/changes", params={"from": "yesterday", "to": nxt})
    ).status_code == 422
    missing = await api.get("/v1/accounts/growth/changes", params={"from": "2025-01-01", "to": nxt})
    assert missing.status_code == 404 and "2025-01-01" in missing.text
    assert (await api.get("/v1/accounts/growth/history", params={"days": 0})).status_code == 422
