"""Dashboard pages: login, accounts list, account detail. Server-rendered; the
tables work without JavaScript, the charts are inline SVG (see charts.py)."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from services.scoring.dashboard import charts, session
from shared.auth import Scope, hash_key

HERE = Path(__file__).parent
PAGE_SIZE = 50
SPARK_DAYS = 90
HISTORY_DAYS = 90
HEATMAP_WEEKS = 12
SORTS = ("score", "-score", "name", "delta", "-delta")


class DashboardData(Protocol):
    """What the pages need; implemented over the scoring read model (data.py)."""

    async def list_accounts(
        self,
        *,
        band: str | None,
        csm: str | None,
        lifecycle_stage: str | None,
        sort: str,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    async def choices(self) -> dict[str, list[str]]: ...

    async def score_series(
        self, account_ids: list[str], days: int
    ) -> dict[str, list[float | None]]: ...

    async def health(self, account_id: str) -> dict[str, Any] | None: ...

    async def history(self, account_id: str, days: int) -> list[dict[str, Any]]: ...

    async def changes(self, account_id: str, day_from: date, day_to: date) -> dict[str, Any]: ...

    async def stakeholders(self, account_id: str, weeks: int) -> list[dict[str, Any]]: ...

    async def alerts(self, account_ids: list[str]) -> dict[str, list[dict[str, Any]]] | None: ...

    def bands(self) -> tuple[float, float]:  # (green, yellow) thresholds
        ...


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if isinstance(v, int | float):
        return f"{v:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{v:,.0f}"
    return str(v)


def _delta(v: float | None) -> str:
    if v is None:
        return "—"
    if abs(v) < 0.05:
        return '<span class="flat" aria-label="unchanged">→ 0</span>'
    arrow, cls, word = ("▲", "up", "up") if v > 0 else ("▼", "down", "down")
    return f'<span class="{cls}" aria-label="{word} {abs(v):.1f}">{arrow} {abs(v):.1f}</span>'


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.0f}%"


def account_path(account_id: str) -> str:
    """The account page's path. The id is one path segment, every reserved character
    percent-encoded ("/", "?", "#", "%", spaces, non-ASCII): Jinja's ``urlencode``
    keeps "/" as it is, which the page's route would still take, but a link must
    name exactly the id it was made for."""
    return "/accounts/" + quote(account_id, safe="")


def dashboard_router(secret: bytes) -> APIRouter:
    """The pages; their data comes from ``app.state.dashboard`` (a DashboardData)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(fmt=_fmt, pct=_pct, account_path=account_path)
    env.globals["delta"] = lambda v: Markup(_delta(v))
    router = APIRouter(include_in_schema=False)

    async def current_key(request: Request) -> bool:
        digest = session.read(secret, request.cookies.get(session.COOKIE))
        if digest is None:
            return False
        key = await request.app.state.keys.verify_digest(digest)
        return key is not None and Scope.READ in key.scopes

    def to_login(request: Request, path: str | None = None) -> Response:
        """To the login form, which sends the person back here. ``path``: this page's
        address, percent-encoded, where the request's own path (decoded) would not
        lead back: an account id holding "?", "#", "%" or "/.." would not."""
        path = path or request.url.path
        target = path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request, next: str = "/") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _safe_next(next), "error": None, "logged_in": False}
        )

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request, key: str = Form(""), next: str = Form("/")) -> Response:
        found = await request.app.state.keys.verify(key.strip()) if key.strip() else None
        if found is None or Scope.READ not in found.scopes:
            error = "That key does not have the read scope." if found else "Unknown or revoked key."
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": _safe_next(next), "error": error, "logged_in": False},
                status_code=401,
            )
        resp = RedirectResponse(_safe_next(next), status_code=303)
        resp.set_cookie(
            session.COOKIE,
            session.issue(secret, hash_key(key.strip())),
            max_age=session.LIFETIME_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        return resp

    @router.post("/logout")
    async def logout() -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(session.COOKIE, path="/")
        return resp

    @router.get("/", response_class=HTMLResponse)
    async def accounts(
        request: Request,
        band: str = "",
        csm: str = "",
        lifecycle_stage: str = "",
        sort: str = "score",
        cursor: str = "",
    ) -> Response:
        if not await current_key(request):
            return to_login(request)
        sort = sort if sort in SORTS else "score"
        q = {
            "band": band if band in ("green", "yellow", "red") else "",
            "csm": csm[:256],
            "lifecycle_stage": lifecycle_stage[:64],
            "sort": sort,
        }

        async def page(at: str | None) -> tuple[list[dict[str, Any]], str | None]:
            return await _data(request).list_accounts(
                band=q["band"] or None,
                csm=q["csm"] or None,
                lifecycle_stage=q["lifecycle_stage"] or None,
                sort=sort,
                limit=PAGE_SIZE,
                cursor=at,
            )

        try:
            items, next_cursor = await page(cursor or None)
        except ValueError:  # a stale or tampered cursor: start over
            items, next_cursor = await page(None)
        ids = [a["account_id"] for a in items]
        series = await _data(request).score_series(ids, SPARK_DAYS)
        alerts = await _data(request).alerts(ids)
        for a in items:
            a["spark"] = charts.sparkline(
                series.get(a["account_id"], []),
                band=a.get("band"),
                label=f"{a['account_id']} score, last 90 days",
            )
            a["open_alerts"] = (
                None
                if alerts is None
                else sum(1 for x in alerts.get(a["account_id"], []) if x.get("state") == "open")
            )

        def link(**changes: str) -> str:
            params = {k: v for k, v in (q | changes).items() if v}
            return "/?" + urlencode(params)

        return templates.TemplateResponse(
            request,
            "accounts.html",
            {
                "accounts": items,
                "q": q,
                "choices": await _data(request).choices(),
                "logged_in": True,
                "sort_link": lambda s: link(sort=s),
                "next_link": link(cursor=next_cursor) if next_cursor else None,
                "first_link": link() if cursor else None,
            },
        )

    # ``path``: an account id may hold "/" (see services/scoring/api.py)
    @router.get("/accounts/{account_id:path}", response_class=HTMLResponse)
    async def account(request: Request, account_id: str) -> Response:
        if not await current_key(request):
            return to_login(request, account_path(account_id))
        h = await _data(request).health(account_id)
        if h is None:
            return templates.TemplateResponse(
                request,
                "not_found.html",
                {"logged_in": True, "account_id": account_id},
                status_code=404,
            )
        green, yellow = _data(request).bands()
        hist = await _data(request).history(account_id, HISTORY_DAYS)
        days = [str(r["day"]) for r in hist]
        history_chart = charts.history_chart(
            [charts.Point(str(r["day"]), r.get("score")) for r in hist], green=green, yellow=yellow
        )

        def kpi(name: str) -> list[float | None]:
            out: list[float | None] = []
            for r in hist:
                v = (r.get("kpis") or {}).get(name)
                out.append(
                    float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None
                )
            return out

        usage_chart = charts.lines_chart(
            days, {"DAU": kpi("dau"), "WAU": kpi("wau"), "MAU": kpi("mau")}, label="Active users"
        )
        adoption_chart = charts.lines_chart(
            days,
            {
                "licence utilisation": kpi("license_utilization"),
                "feature adoption": kpi("feature_adoption"),
            },
            label="Adoption",
        )
        explanation = charts.explanation_bars(
            [
                charts.Bar(
                    m["kpi"],
                    float(m.get("contribution") or 0),
                    float(m.get("left_on_table") or 0),
                    f"{m['kpi']} = {_fmt(m.get('value'), 2)}: {_fmt(m.get('points'))} points"
                    f" × weight {_pct(m.get('weight'))}",
                )
                for m in h.get("measures", [])
            ]
        )
        today = date.fromisoformat(str(h["as_of"]))
        qp = request.query_params
        changes_from = qp.get("from") or str(today - timedelta(days=7))
        changes_to = qp.get("to") or str(today)
        try:
            changes = await _data(request).changes(
                account_id, date.fromisoformat(changes_from), date.fromisoformat(changes_to)
            )
        except ValueError as exc:
            changes = {"error": f"cannot compare: {exc}"}
        stakeholders = await _data(request).stakeholders(account_id, HEATMAP_WEEKS)
        weeks = _week_labels(stakeholders, today)
        heat = charts.heatmap(
            [
                charts.HeatRow(
                    s.get("name") or s["contact_id"],
                    ", ".join(
                        x
                        for x in (
                            ("★ champion" if s.get("role") == "champion" else ""),
                            ("left the company" if s.get("left_company") else ""),
                        )
                        if x
                    ),
                    [w.get("inbound", 0) for w in s.get("weeks", [])],
                    [w.get("outbound", 0) for w in s.get("weeks", [])],
                )
                for s in stakeholders
            ],
            weeks,
        )
        alerts = await _data(request).alerts([account_id])
        return templates.TemplateResponse(
            request,
            "account.html",
            {
                "h": h,
                "name": h.get("account_name"),
                "logged_in": True,
                "history_days": HISTORY_DAYS,
                "history_chart": history_chart,
                "usage_chart": usage_chart,
                "adoption_chart": adoption_chart,
                "explanation": explanation,
                "changes": changes,
                "changes_from": changes_from,
                "changes_to": changes_to,
                "weeks": HEATMAP_WEEKS,
                "heatmap": heat,
                "stakeholders": stakeholders,
                "alerts": None if alerts is None else alerts.get(account_id, []),
            },
        )

    return router


def _data(request: Request) -> DashboardData:
    data: DashboardData = request.app.state.dashboard
    return data


def mount_static(app: Any) -> None:
    app.mount(
        "/static/dashboard", StaticFiles(directory=str(HERE / "static")), name="dashboard-static"
    )


def _safe_next(target: str) -> str:
    """Only local paths: never redirect a logged-in user to another site."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target[:2000]


def _week_labels(stakeholders: list[dict[str, Any]], today: date) -> list[str]:
    for s in stakeholders:
        weeks = s.get("weeks") or []
        if weeks:
            return [str(w.get("week")) for w in weeks]
    start = today - timedelta(days=today.weekday())
    return [str(start - timedelta(weeks=HEATMAP_WEEKS - 1 - i)) for i in range(HEATMAP_WEEKS)]
