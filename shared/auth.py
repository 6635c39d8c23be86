"""API keys: generation, hashing, storage and the FastAPI dependency that checks them.

Keys look like ``hs_<43 url-safe chars>`` (256 random bits). Only their SHA-256 is
stored: a key with that much entropy needs no slow hash. The same keys work on all
three services. Accepted as ``Authorization: Bearer KEY``, as HTTP Basic with the
key as user name and an empty password (what Segment clients send), and — on the
Segment endpoints only — as ``writeKey`` in the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from fastapi import HTTPException, Request
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import new_metadata

KEY_PREFIX = "hs_"
CACHE_SECONDS = 10.0  # a revoked key stops working within this many seconds


class Scope(StrEnum):
    INGEST = "ingest"
    READ = "read"
    ADMIN = "admin"


metadata = new_metadata()
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("display_prefix", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("rate_limit_per_second", Float, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    rate_limit_per_second: float | None = None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def key_from_headers(authorization: str | None) -> str | None:
    """The raw key from a Bearer or Basic ``Authorization`` header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


@dataclass
class KeyStore:
    """Looks keys up by hash, with a short cache so ingest's hot path does not
    query Postgres per request."""

    engine: AsyncEngine
    bootstrap_key: str | None = None
    _cache: dict[str, tuple[float, ApiKey | None]] = field(default_factory=dict)

    async def verify(self, raw: str) -> ApiKey | None:
        if self.bootstrap_key and hmac.compare_digest(raw.encode(), self.bootstrap_key.encode()):
            return ApiKey(id="bootstrap", name="bootstrap", scopes=frozenset(Scope))
        if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
            return None
        return await self.verify_digest(hash_key(raw))

    async def verify_digest(self, digest: str) -> ApiKey | None:
        """The active key whose SHA-256 is ``digest`` (dashboard sessions carry the
        digest, never the key)."""
        if self.bootstrap_key and hmac.compare_digest(digest, hash_key(self.bootstrap_key)):
            return ApiKey(id="bootstrap", name="bootstrap", scopes=frozenset(Scope))
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        api_keys.c.id,
                        api_keys.c.name,
                        api_keys.c.scopes,
                        api_keys.c.rate_limit_per_second,
                    ).where(api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None))
                )
            ).first()
        key = (
            ApiKey(row.id, row.name, frozenset(row.scopes), row.rate_limit_per_second)
            if row
            else None
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now, key)
        return key

    async def require(self, request: Request, scope: Scope, raw: str | None = None) -> ApiKey:
        """The caller's key when it has ``scope``; otherwise 401 (missing/unknown)
        or 403 (wrong scope)."""
        raw = raw or key_from_headers(request.headers.get("authorization"))
        if raw is None:
            raise HTTPException(
                401,
                "missing API key: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": 'Bearer realm="healthscore"'},
            )
        key = await self.verify(raw)
        if key is None:
            raise HTTPException(
                401,
                "unknown or revoked API key",
                headers={"WWW-Authenticate": 'Bearer realm="healthscore"'},
            )
        if scope not in key.scopes:
            raise HTTPException(403, f"this API key lacks the '{scope}' scope")
        return key


def require_scope(scope: Scope):  # type: ignore[no-untyped-def]
    """FastAPI dependency: ``Depends(require_scope(Scope.READ))``. The app must
    have a :class:`KeyStore` at ``app.state.keys``."""

    async def dependency(request: Request) -> ApiKey:
        store: KeyStore = request.app.state.keys
        return await store.require(request, scope)

    dependency.__name__ = f"require_{scope}"
    return dependency


# --- key management (CLI) ------------------------------------------------------


async def create_key(
    engine: AsyncEngine, name: str, scopes: list[str], rate_limit_per_second: float | None = None
) -> tuple[str, str]:
    """Store a new key; returns (key id, raw key). The raw key is never stored."""
    for s in scopes:
        Scope(s)  # raises ValueError on an unknown scope
    raw = generate_key()
    key_id = "key_" + secrets.token_hex(8)
    async with engine.begin() as conn:
        await conn.execute(
            insert(api_keys).values(
                id=key_id,
                name=name,
                key_hash=hash_key(raw),
                display_prefix=raw[:7],
                scopes=sorted(set(scopes)),
                rate_limit_per_second=rate_limit_per_second,
            )
        )
    return key_id, raw


async def list_keys(engine: AsyncEngine) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        rows = (
            (
                await conn.execute(
                    select(
                        api_keys.c.id,
                        api_keys.c.name,
                        api_keys.c.display_prefix,
                        api_keys.c.scopes,
                        api_keys.c.rate_limit_per_second,
                        api_keys.c.created_at,
                        api_keys.c.revoked_at,
                    ).order_by(api_keys.c.created_at)
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]


async def revoke_key(engine: AsyncEngine, key_id: str) -> bool:
    async with engine.begin() as conn:
        result = await conn.execute(
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    return bool(result.rowcount)
