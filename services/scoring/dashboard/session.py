"""Dashboard login sessions: a signed, expiring cookie that names an API key by its
hash (never the key itself). Pure: no web framework here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

COOKIE = "hs_session"
LIFETIME_SECONDS = 12 * 3600


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(
    secret: bytes, key_digest: str, now: float | None = None, lifetime: int = LIFETIME_SECONDS
) -> str:
    payload = json.dumps(
        {"k": key_digest, "exp": int((now or time.time()) + lifetime)}, separators=(",", ":")
    ).encode()
    sig = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(sig)}"


def read(secret: bytes, token: str | None, now: float | None = None) -> str | None:
    """The key digest of a valid, unexpired token; None otherwise."""
    if not token or token.count(".") != 1 or len(token) > 1024:
        return None
    body, sig = token.split(".")
    try:
        payload, given = _unb64(body), _unb64(sig)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(hmac.new(secret, payload, hashlib.sha256).digest(), given):
        return None
    try:
        doc = json.loads(payload)
        digest, exp = str(doc["k"]), float(doc["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    return digest if exp > (now or time.time()) else None
