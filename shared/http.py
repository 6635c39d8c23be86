"""What every service's HTTP app has: ``/healthz``, ``/readyz``, ``/metrics``, request
metrics, and precise error bodies for invalid requests."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

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


# The body of every 422 of the read and admin APIs (``on_invalid`` above), as the
# OpenAPI document states it instead of FastAPI's default ``HTTPValidationError``.
_INVALID_REQUEST = {
    "title": "InvalidRequest",
    "type": "object",
    "required": ["errors"],
    "properties": {
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {
                    "field": {
                        "type": "string",
                        "description": "where: query.limit, path.account_id, body.kpi…",
                    },
                    "message": {"type": "string", "description": "what is wrong, and why"},
                },
            },
        }
    },
}
_DETAIL = {
    "description": "",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["detail"],
                "properties": {"detail": {"type": "string"}},
            }
        }
    },
}


def document_api(app: FastAPI, *, basic: bool = False) -> None:
    """Make ``app``'s OpenAPI document say what its ``/v1`` operations really take
    and answer: an API key as a bearer token (with ``basic``, also as the HTTP Basic
    user name, as Segment libraries send it), so ``/docs`` has an "Authorize" button
    and generated clients send the key; 401/403 for a missing or insufficient key;
    and the service's own 422 body (``{"errors": [{field, message}]}``), not
    FastAPI's default. Probes, metrics and the dashboard stay open. Call it last
    (after any ``app.openapi`` of the service's own)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()  # cached in app.openapi_schema: changed once
        components = schema.setdefault("components", {})
        schemes = components.setdefault("securitySchemes", {})
        if "apiKey" in schemes:
            return schema
        schemes["apiKey"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key (`hs_…`): `Authorization: Bearer <key>`.",
        }
        required: list[dict[str, list[str]]] = [{"apiKey": []}]
        if basic:
            schemes["segmentWriteKey"] = {
                "type": "http",
                "scheme": "basic",
                "description": "Segment style: the API key as user name, no password.",
            }
            required.append({"segmentWriteKey": []})
        schemas = components.setdefault("schemas", {})
        default_422 = "#/components/schemas/HTTPValidationError"
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                body = responses.get("422", {}).get("content", {}).get("application/json", {})
                if body.get("schema", {}).get("$ref") == default_422:
                    body["schema"] = {"$ref": "#/components/schemas/InvalidRequest"}
                    schemas["InvalidRequest"] = _INVALID_REQUEST
                if path.startswith("/v1/"):
                    operation.setdefault("security", required)
                    responses.setdefault("401", _DETAIL | {"description": "No valid API key"})
                    responses.setdefault("403", _DETAIL | {"description": "Key lacks the scope"})
        schemas.pop("HTTPValidationError", None)  # referenced no more
        schemas.pop("ValidationError", None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
