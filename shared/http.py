"""What every service's HTTP app has: ``/healthz``, ``/readyz``, ``/metrics``, request
metrics, and precise error bodies for invalid requests."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.metrics import HttpMetricsMiddleware, metrics_response

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[bool]]

# Largest request body of the admin and read APIs (rules, subscriptions, the login
# form are small), given to FastAPI(max_body_size=...): a larger declared
# Content-Length is refused with 413 before anything is read, a chunked body as
# soon as it passes the limit. Ingest enforces its own limits (request_body.py).
MAX_BODY_BYTES = 64 * 1024


def validation_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """``[{field, message}]`` for each problem, the field as a dotted path."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"field": ".".join(loc), "message": str(err.get("msg", "invalid"))})
    return out


class RejectNulMiddleware:
    """400 for a NUL character anywhere in the path or query: PostgreSQL text cannot
    hold one, so it would otherwise surface as a 500 deep in a query."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "")
            or b"%00" in scope.get("query_string", b"")
            or b"\x00" in scope.get("query_string", b"")
            or b"%00" in scope.get("raw_path", b"")
        ):
            response = JSONResponse(
                {"detail": "NUL characters are not allowed in the path or query"}, status_code=400
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_common(app: FastAPI, service: str, checks: dict[str, ReadinessCheck]) -> None:
    """Add the probes, ``/metrics``, request timing and error handlers to ``app``.

    ``checks`` name what must answer for the service to be ready (``database``,
    ``broker``, ``consumer``…); ``/readyz`` answers 503 with each check's result
    when any fails.
    """
    app.add_middleware(RejectNulMiddleware)
    app.add_middleware(HttpMetricsMiddleware, service=service)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        results = {name: await check() for name, check in checks.items()}
        ok = all(results.values())
        return JSONResponse(
            {"ready": ok, "service": service, "checks": results}, status_code=200 if ok else 503
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response()

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"errors": validation_errors(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error", extra={"path": request.url.path})
        return PlainTextResponse("internal error", status_code=500)
