from __future__ import annotations

import base64

import pytest

from shared.auth import generate_key, hash_key, key_from_headers


@pytest.mark.parametrize(
    ("header", "key"),
    [
        pytest.param("Bearer hs_abc", "hs_abc", id="bearer"),
        pytest.param("bearer  hs_abc ", "hs_abc", id="bearer-case-space"),
        pytest.param(
            "Basic " + base64.b64encode(b"hs_abc:").decode(), "hs_abc", id="basic-segment"
        ),
        pytest.param(
            "Basic " + base64.b64encode(b"hs_abc").decode(), "hs_abc", id="basic-no-colon"
        ),
        pytest.param("Basic !!notbase64", None, id="basic-garbage"),
        pytest.param("Token hs_abc", None, id="unknown-scheme"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_key_from_headers(header: str | None, key: str | None) -> None:
    assert key_from_headers(header) == key


def test_generated_keys_are_unique_and_hash_stable() -> None:
    a, b = generate_key(), generate_key()
    assert a != b and a.startswith("hs_") and len(a) > 40
    assert hash_key(a) == hash_key(a) != hash_key(b)
