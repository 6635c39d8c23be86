"""No way in: every route needs a key with the right scope (the test walks each
service's route table, so a new route cannot slip through unprotected); keys are
stored only as hashes; secrets never reach the logs; identifiers that look like
SQL are plain data."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.routing import APIRoute
from starlette.routing import Mount

from services.alerts.app import create_app as alerts_app
from services.alerts.settings import AlertsSettings
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.scoring.app import create_app as scoring_app
from services.scoring.settings import ScoringSettings
from shared import db
from shared.auth import create_key
from tests.infra import BOOTSTRAP_KEY, ServiceProcess, running

# Public on purpose: probes and metrics (SPEC §2), API documentation (no data), the
# dashboard's login form and its stylesheet. Dashboard pages redirect to /login.
PUBLIC = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
    "/login",
    "/logout",
}
DASHBOARD_PAGES = {"/", "/accounts/{account_id:path}"}
RIGHT_SCOPE = {"ingest": "ingest", "scoring": "read", "alerts": "admin"}
WRONG_SCOPE = {"ingest": "read", "scoring": "ingest", "alerts": "read"}


def _routes(
    name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, str]]:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    app: Any = {
        "ingest": lambda: ingest_app(IngestSettings()),
        "scoring": lambda: scoring_app(ScoringSettings()),
        "alerts": lambda: alerts_app(AlertsSettings()),
    }[name]()
    out = []
    for r in app.routes:
        if hasattr(r, "effective_route_contexts"):  # an included router (FastAPI ≥ 0.16x)
            for ctx in r.effective_route_contexts():
                out += [(m, ctx.path) for m in sorted(ctx.methods)]
        elif isinstance(r, APIRoute):
            out += [(m, r.path) for m in sorted(r.methods)]
        elif isinstance(r, Mount):
            assert r.path == "/static/dashboard", f"unexpected mount {r.path}"
        elif r.path not in PUBLIC:  # starlette's own docs routes
            out += [(m, r.path) for m in sorted(getattr(r, "methods", None) or {"GET"})]
    return out


@pytest.fixture(scope="module")
def stack(env: dict[str, str]) -> Iterator[dict[str, ServiceProcess]]:
    debug = env | {"HEALTHSCORE_LOG_LEVEL": "DEBUG"}
    procs = {n: ServiceProcess(n, debug) for n in ("ingest", "scoring", "alerts")}
    with running(*procs.values()):
        yield procs


@pytest.fixture(scope="module")
async def keys(database_url: str) -> dict[str, str]:
    engine = db.create_engine(database_url)
    try:
        return {
            s: (await create_key(engine, f"sec-{s}", [s]))[1] for s in ("ingest", "read", "admin")
        }
    finally:
        await engine.dispose()


def _fill(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


@pytest.mark.parametrize("name", ["ingest", "scoring", "alerts"])
def test_every_route_needs_a_key_with_the_right_scope(
    name: str,
    stack: dict[str, ServiceProcess],
    keys: dict[str, str],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = _routes(name, env, monkeypatch)
    protected = [(m, p) for m, p in routes if p not in PUBLIC and p not in DASHBOARD_PAGES]
    # the walk must see every API route: native + 8 Segment routes, the 5 read routes,
    # rules/webhooks/deliveries/alerts
    assert len(protected) >= {"ingest": 9, "scoring": 5, "alerts": 15}[name], protected
    base = stack[name].url
    wrong = keys[WRONG_SCOPE[name]]
    problems = []
    with httpx.Client(base_url=base, timeout=10) as client:
        for method, path in protected:
            url = _fill(path)
            anonymous = client.request(method, url, json={})
            if anonymous.status_code != 401:
                problems.append(f"{method} {path} without a key: {anonymous.status_code}")
            scoped = client.request(
                method, url, json={}, headers={"Authorization": f"Bearer {wrong}"}
            )
            if scoped.status_code != 403:
                problems.append(
                    f"{method} {path} with a {WRONG_SCOPE[name]} key: {scoped.status_code}"
                )
            revoked = client.request(
                method, url, json={}, headers={"Authorization": "Bearer hs_" + "x" * 43}
            )
            if revoked.status_code != 401:
                problems.append(f"{method} {path} with an unknown key: {revoked.status_code}")
        for method, path in routes:
            if path in DASHBOARD_PAGES:
                r = client.request(method, _fill(path), follow_redirects=False)
                if not (r.status_code == 303 and r.headers["location"].startswith("/login")):
                    problems.append(f"{method} {path} without a session: {r.status_code}")
    assert problems == []


@pytest.mark.parametrize("name", ["ingest", "scoring", "alerts"])
def test_the_openapi_document_says_which_operations_take_a_key(
    name: str, stack: dict[str, ServiceProcess]
) -> None:
    """/docs gets an "Authorize" button and generated clients send the key: every
    operation that needs one (all of /v1, the walk above) declares it; probes do not."""
    spec = httpx.get(f"{stack[name].url}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    undeclared, declared = [], []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            names = {n for requirement in op.get("security", []) for n in requirement}
            if path.startswith("/v1/") and "apiKey" not in names:
                undeclared.append(f"{method.upper()} {path}")
            if not path.startswith("/v1/") and names:
                declared.append(f"{method.upper()} {path}")
    assert undeclared == [] and declared == []
    # the 422 body documented is the one the services send, FastAPI's default is gone
    assert "HTTPValidationError" not in str(spec)
    if name != "ingest":  # ingest documents its own answers (openapi_docs.py)
        invalid = spec["components"]["schemas"]["InvalidRequest"]
        assert invalid["required"] == ["errors"]
    if name == "ingest":  # Segment libraries send the key as the Basic user name
        assert schemes["segmentWriteKey"]["scheme"] == "basic"
        assert {"segmentWriteKey": []} in spec["paths"]["/v1/batch"]["post"]["security"]


def test_the_right_scope_gets_in(stack: dict[str, ServiceProcess], keys: dict[str, str]) -> None:
    ok = {
        "ingest": httpx.post(
            f"{stack['ingest'].url}/v1/events",
            json={"events": [{"type": "login", "account_id": "sec", "user_id": "u"}]},
            headers={"Authorization": f"Bearer {keys['ingest']}"},
        ),
        "scoring": httpx.get(
            f"{stack['scoring'].url}/v1/accounts",
            headers={"Authorization": f"Bearer {keys['read']}"},
        ),
        "alerts": httpx.get(
            f"{stack['alerts'].url}/v1/rules", headers={"Authorization": f"Bearer {keys['admin']}"}
        ),
    }
    assert {n: r.status_code for n, r in ok.items()} == {
        "ingest": 202,
        "scoring": 200,
        "alerts": 200,
    }


async def test_keys_and_webhook_secrets_never_reach_the_logs(
    stack: dict[str, ServiceProcess], keys: dict[str, str], database_url: str
) -> None:
    # use every key, in every way it can be sent, and make a webhook secret
    async with httpx.AsyncClient(timeout=10) as client:
        for key in keys.values():
            await client.get(
                f"{stack['scoring'].url}/v1/accounts", headers={"Authorization": f"Bearer {key}"}
            )
            await client.post(
                f"{stack['ingest'].url}/v1/batch",
                auth=(key, ""),
                json={
                    "batch": [
                        {"type": "track", "event": "x", "userId": "u", "context": {"groupId": "g"}}
                    ]
                },
            )
            await client.post(
                f"{stack['ingest'].url}/v1/track",
                json={"writeKey": key, "event": "x", "userId": "u", "context": {"groupId": "g"}},
            )
        created = await client.post(
            f"{stack['alerts'].url}/v1/webhooks",
            headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"},
            json={"url": "https://hooks.example.com/x", "event_types": ["alert.fired"]},
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        assert secret.startswith("whsec_")
    await asyncio.sleep(1)  # let the services flush their logs
    logs = "".join(s.log_text() for s in stack.values())
    assert logs.count("\n") > 10, "the services logged (almost) nothing: the check would be empty"
    for value in [*keys.values(), BOOTSTRAP_KEY, secret, secret.removeprefix("whsec_")]:
        assert value not in logs
    conn = await asyncpg.connect(database_url)
    try:
        stored = "".join(str(r) for r in await conn.fetch("SELECT * FROM api_keys"))
    finally:
        await conn.close()
    assert not any(k in stored for k in keys.values()), "keys are stored as hashes only"


@pytest.mark.parametrize(
    "account_id",
    [
        "x'; DROP TABLE api_keys; --",
        "Robert'); DELETE FROM scoring_scores;--",
        "%' OR '1'='1",
        "\\x00\\' UNION SELECT 1",
    ],
)
def test_sql_looking_identifiers_are_plain_data(
    stack: dict[str, ServiceProcess], account_id: str
) -> None:
    auth = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    r = httpx.post(
        f"{stack['ingest'].url}/v1/events",
        headers=auth,
        json={
            "events": [
                {
                    "type": "account_updated",
                    "account_id": account_id,
                    "name": account_id,
                    "seats_purchased": 3,
                }
            ]
        },
    )
    assert r.status_code == 202, r.text
    health = None
    for _ in range(100):
        health = httpx.get(
            f"{stack['scoring'].url}/v1/accounts/{httpx.URL(path=account_id)}/health", headers=auth
        )
        if health.status_code == 200:
            break
        time.sleep(0.1)
    assert health is not None and health.status_code == 200, health.text if health else None
    assert health.json()["account_id"] == account_id
    listed = httpx.get(
        f"{stack['scoring'].url}/v1/accounts", headers=auth, params={"csm": account_id}
    )
    assert listed.status_code == 200
    alerts = httpx.get(
        f"{stack['alerts'].url}/v1/alerts", headers=auth, params={"account_id": account_id}
    )
    assert alerts.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/v1/accounts/" + "a" * 129 + "/health",
        "/v1/accounts/%00/health",
    ],
)
def test_oversized_or_binary_identifiers_get_a_4xx(
    stack: dict[str, ServiceProcess], path: str
) -> None:
    r = httpx.get(stack["scoring"].url + path, headers={"Authorization": f"Bearer {BOOTSTRAP_KEY}"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def _answer_to_raw_request(port: int, head: str, body_chunks: list[bytes]) -> int:
    """Send ``head`` and ``body_chunks`` on a plain socket, never finishing the body
    that the head announces; return the status code of the answer. A server that
    waited for the whole body would never answer (the socket timeout fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            sock.sendall(chunk)
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    return int(status_line.split(b" ")[1])


def _chunked(total: int, size: int = 8192) -> list[bytes]:
    return [f"{size:x}\r\n".encode() + b"x" * size + b"\r\n" for _ in range(total // size)]


@pytest.mark.parametrize("name", ["ingest", "scoring", "alerts"])
def test_oversized_bodies_are_refused_before_being_read_whole(
    name: str,
    stack: dict[str, ServiceProcess],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routes = [(m, p) for m, p in _routes(name, env, monkeypatch) if m in {"POST", "PUT", "PATCH"}]
    assert routes, "no body-accepting route found: the walk is broken"
    port = stack[name].port
    spec = httpx.get(f"{stack[name].url}/openapi.json").json()
    reads_body = {
        (m.upper(), p)
        for p, ops in spec["paths"].items()
        for m, op in ops.items()
        if "requestBody" in op
    }
    # scoring's only body is the dashboard login form, which is not in its API schema
    assert reads_body or name == "scoring", "no documented request body: the check is empty"
    problems = []
    for method, path in routes:
        base = (
            f"{method} {_fill(path)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {BOOTSTRAP_KEY}\r\nContent-Type: application/json\r\n"
        )
        # 1 GB announced, a few bytes sent
        declared = _answer_to_raw_request(
            port, base + "Content-Length: 1000000000\r\n\r\n", [b'{"events": [']
        )
        # no length announced: chunks keep coming past every limit (2 MiB)
        streamed = _answer_to_raw_request(
            port, base + "Transfer-Encoding: chunked\r\n\r\n", _chunked(2 * 1024 * 1024)
        )
        # a route that reads a body must refuse it (413); one that does not may
        # answer anything but success or a server error
        ok = streamed == 413 if (method, path) in reads_body else 300 <= streamed < 500
        if declared != 413 or not ok:
            problems.append(f"{method} {path}: {declared} (declared), {streamed} (chunked)")
    assert problems == []
