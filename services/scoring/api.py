"""The read API of SPEC §6 (``read`` scope): accounts list, health, history,
changes between two days, stakeholders heatmap data. Thin HTTP layer over
read_model.py (which the dashboard uses too)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError

from services.scoring import read_model
from services.scoring.clock import Clock
from shared.auth import Scope, require_scope

router = APIRouter(prefix="/v1", dependencies=[Depends(require_scope(Scope.READ))])

# Account ids are any 1–128 characters (SPEC §3), so they may hold "/" (Segment
# group ids like "org/123"). The server decodes %2F before routing, so a plain
# {account_id} would never match such an id: the ``path`` convertor takes every
# character up to the route's fixed suffix (/health, /history, …). The suffixes
# differ and the patterns are anchored at both ends, so a path matches at most
# one of these routes and names exactly one id, whether the client sends the "/"
# in the id as %2F (as it should) or as it is.
AccountId = Annotated[str, Path(min_length=1, max_length=128)]
SortKey = Literal["score", "-score", "name", "-name", "delta", "-delta"]


def _pool(request: Request) -> Any:
    return request.app.state.pool


def _today(request: Request) -> date:
    clock: Clock = request.app.state.clock
    return clock.now().date()


def _invalid(field: str, message: str) -> RequestValidationError:
    """A 422 in the same ``{"errors": [{field, message}]}`` shape as FastAPI's own."""
    return RequestValidationError(
        [{"loc": ("query", field), "msg": message, "type": "value_error"}]
    )


async def _answer(call: Any) -> dict[str, Any]:
    try:
        result: dict[str, Any] = await call
        return result
    except read_model.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except read_model.BadQuery as exc:
        raise _invalid(exc.field, str(exc)) from None


@router.get("/accounts")
async def list_accounts(
    request: Request,
    band: Literal["green", "yellow", "red"] | None = None,
    lifecycle_stage: Literal["trial", "poc", "onboarding", "active", "churned"] | None = None,
    csm: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    sort: SortKey = "score",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """Accounts with score, band, 7-day delta and last activity; keyset-paginated."""
    return await _answer(
        read_model.accounts_page(
            _pool(request),
            band=band,
            lifecycle_stage=lifecycle_stage,
            csm=csm,
            sort=sort,
            limit=limit,
            cursor=cursor,
        )
    )


@router.get("/accounts/{account_id:path}/health")
async def account_health(request: Request, account_id: AccountId) -> dict[str, Any]:
    """The current score with its explanation (SPEC §6 shape)."""
    return await _answer(read_model.health(_pool(request), account_id))


@router.get("/accounts/{account_id:path}/history")
async def account_history(
    request: Request, account_id: AccountId, days: Annotated[int, Query(ge=1, le=400)] = 90
) -> dict[str, Any]:
    """One row per day for the last ``days`` days (days never evaluated are absent)."""
    return await _answer(read_model.history(_pool(request), account_id, _today(request), days))


@router.get("/accounts/{account_id:path}/changes")
async def account_changes(
    request: Request,
    account_id: AccountId,
    from_day: Annotated[date, Query(alias="from")],
    to_day: Annotated[date, Query(alias="to")],
) -> dict[str, Any]:
    """Why the score moved between two days: per-measure contribution deltas."""
    return await _answer(read_model.changes(_pool(request), account_id, from_day, to_day))


@router.get("/accounts/{account_id:path}/stakeholders")
async def account_stakeholders(
    request: Request, account_id: AccountId, weeks: Annotated[int, Query(ge=1, le=52)] = 12
) -> dict[str, Any]:
    """Per contact: role, last inbound/outbound day, touches per ISO week (Monday
    start) in each direction, oldest week first — the relationship heatmap."""
    return await _answer(
        read_model.stakeholders(_pool(request), account_id, _today(request), weeks)
    )
