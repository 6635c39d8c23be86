"""Webhook pure core: Standard Webhooks signatures (checked with the reference
library), payload size and Slack format, retry schedule, SSRF classification."""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, date, datetime
from urllib.parse import quote, unquote, urlsplit

import orjson
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.alerts import payloads, signing
from services.alerts.retry import RetryPolicy, parse_retry_after, parse_schedule
from services.alerts.rules import Rule
from services.alerts.ssrf import AllowList, SsrfRefused, check_addresses, classify
from services.alerts.subscriptions import Subscription, active_secrets
from shared.health import HealthSnapshot, MeasureResult

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def test_signature_verifies_with_the_reference_library() -> None:
    secret = signing.generate_secret()
    assert secret.startswith("whsec_") and len(signing.secret_key(secret)) >= 24
    body = b'{"type":"alert.fired"}'
    ts = int(datetime.now(UTC).timestamp())
    headers = signing.headers([secret], "msg_1", ts, body)
    assert Webhook(secret).verify(body, headers) == {"type": "alert.fired"}
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.generate_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)


def test_rotation_sends_both_signatures_each_verifies() -> None:
    old, new = signing.generate_secret(), signing.generate_secret()
    body = b"{}"
    ts = int(datetime.now(UTC).timestamp())
    headers = signing.headers([new, old], "msg_2", ts, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    later = datetime(2030, 1, 1, tzinfo=UTC)
    assert active_secrets(new, old, NOW, later) == [new]
    assert active_secrets(new, old, later, NOW) == [new, old]


def _snapshot(name: str = "Acme") -> HealthSnapshot:
    return HealthSnapshot(
        account_id="acme",
        account_name=name,
        revision=3,
        as_of=date(2026, 11, 1),
        evaluated_at=NOW,
        trigger="events",
        score=42.0,
        band="red",
        coverage=1.0,
        model_version="m",
        in_grace_period=False,
        kpis={"nps": -20},
        measures=[
            MeasureResult(
                kpi=f"k{i}" + "x" * 5000,
                value=1,
                points=10,
                weight=0.1,
                contribution=1,
                left_on_table=9,
            )
            for i in range(10)
        ],
    )


RULE = Rule(id="nps", name="NPS below 0", kpi="nps", op="<", threshold=0, severity="critical")


def _event(snapshot: HealthSnapshot) -> dict:
    return payloads.alert_event(
        "alert.fired",
        rule=RULE,
        alert_id="alr_1",
        value=-20,
        fired_at=NOW,
        at=NOW,
        snapshot=snapshot,
    )


def test_standard_body_has_the_spec_fields_and_stays_under_20kb() -> None:
    event = _event(_snapshot())
    body = payloads.encode_standard(event)
    assert len(body) <= payloads.MAX_BODY_BYTES
    doc = orjson.loads(body)
    assert doc["type"] == "alert.fired"
    assert set(doc["data"]) >= {
        "account_id",
        "account_name",
        "rule",
        "kpi",
        "value",
        "threshold",
        "score",
        "band",
        "explanation",
        "alert_id",
        "fired_at",
    }
    assert doc["data"]["rule"] == {"id": "nps", "name": "NPS below 0", "severity": "critical"}
    assert doc["data"]["explanation"].endswith("…")  # trimmed, not dropped
    small = orjson.loads(
        payloads.encode_standard(_event(_snapshot().model_copy(update={"measures": []})))
    )
    assert "nps is -20" in small["data"]["explanation"]


def test_slack_message_names_account_rule_value_score_and_links() -> None:
    msg = payloads.slack_message(_event(_snapshot()), "https://hs.example.com/")
    flat = orjson.dumps(msg).decode()
    assert "Acme" in msg["text"] and "NPS below 0" in msg["text"]
    assert "https://hs.example.com/accounts/acme" in flat
    assert "42.0 (red)" in flat and "-20" in flat
    assert msg["blocks"][0]["type"] == "section"


@pytest.mark.parametrize(
    "account_id",
    [
        pytest.param("org/123", id="slash"),
        pytest.param("a?b#c", id="query-and-fragment"),
        pytest.param("50%off", id="percent"),
        pytest.param("x|y>z", id="slack-link-delimiters"),
        pytest.param("ünï cødé", id="unicode-and-space"),
        pytest.param("../admin", id="dot-segments"),
    ],
)
def test_slack_link_names_exactly_its_account(account_id: str) -> None:
    snapshot = _snapshot().model_copy(update={"account_id": account_id})
    msg = payloads.slack_message(_event(snapshot), "https://hs.example.com/")
    button = msg["blocks"][-1]["elements"][0]["url"]
    assert button == f"https://hs.example.com/accounts/{quote(account_id, safe='')}"
    parts = urlsplit(button)
    assert parts.query == "" and parts.fragment == ""
    assert unquote(parts.path.removeprefix("/accounts/")) == account_id
    # Slack's <url|label>: the link ends at the first "|", never inside the id
    account_field = msg["blocks"][1]["fields"][0]["text"]
    assert account_field == f"*Account*\n<{button}|Acme>"


def test_slack_message_shows_names_with_slack_markup_characters_literally() -> None:
    """Slack reads &, < and > as markup: an account named "<Acme> & Sons" must show
    as it is, and its link label must not end at its ">"."""
    snapshot = _snapshot().model_copy(update={"account_name": "<Acme> & Sons"})
    event = _event(snapshot)
    event["data"]["rule"] = {**event["data"]["rule"], "name": "NPS < 0"}
    msg = payloads.slack_message(event, "https://hs.example.com/")
    assert "&lt;Acme&gt; &amp; Sons" in msg["text"] and "NPS &lt; 0" in msg["text"]
    account_field = msg["blocks"][1]["fields"][0]["text"]
    assert account_field.endswith("|&lt;Acme&gt; &amp; Sons>")
    assert account_field.count(">") == 1  # the link's own end, nothing of the name
    assert msg["blocks"][1]["fields"][1]["text"].startswith("*Rule*\nNPS &lt; 0 (")


def test_subscription_filters() -> None:
    event = _event(_snapshot())
    sub = Subscription("wh", "http://x", ("alert.fired",))
    assert sub.matches(event, "critical")
    assert not Subscription("wh", "http://x", ("alert.resolved",)).matches(event, "critical")
    assert not Subscription("wh", "u", ("alert.fired",), severities=("info",)).matches(
        event, "critical"
    )
    assert Subscription("wh", "u", ("alert.fired",), rule_ids=("nps",)).matches(event, "critical")
    assert not Subscription("wh", "u", ("alert.fired",), account_ids=("b",)).matches(
        event, "critical"
    )
    assert not Subscription("wh", "u", ("alert.fired",), enabled=False).matches(event, "critical")


def test_retry_schedule_jitter_and_retry_after() -> None:
    policy = RetryPolicy(parse_schedule("0,5,300"), jitter=0.1, retry_after_max=600)
    rng = random.Random(1)
    assert policy.max_attempts == 3
    d1 = policy.next_delay(1, rng=rng)
    assert d1 is not None and 4.5 <= d1 <= 5.5
    assert policy.next_delay(3) is None  # all attempts made
    assert policy.next_delay(1, retry_after=120, rng=rng) == 120  # honoured
    assert policy.next_delay(1, retry_after=99999, rng=rng) == 600  # clamped
    assert parse_retry_after("30", NOW) == 30
    assert parse_retry_after("Sun, 01 Nov 2026 00:01:00 GMT", NOW) == 60
    assert parse_retry_after("soon", NOW) is None
    with pytest.raises(ValueError):
        parse_schedule("1,-2")


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("fd00::1", "unique-local"),
        ("::ffff:127.0.0.1", "ipv4-mapped (loopback)"),
        pytest.param("::ffff:93.184.216.34", "ipv4-mapped", id="ipv4-mapped-public"),
        pytest.param("2002:a9fe:a9fe::", "6to4 (link-local)", id="6to4-metadata"),
        pytest.param("2002:7f00:1::1", "6to4 (loopback)", id="6to4-loopback"),
        pytest.param("2002:a00:1::", "6to4 (private)", id="6to4-private"),
        pytest.param("2002:5db8:d822::", "6to4", id="6to4-public"),
        pytest.param("fec0::1", "site-local", id="site-local"),
        pytest.param("feff::1", "site-local", id="site-local-end"),
        pytest.param("192.0.0.9", "ietf-protocol", id="ietf-192.0.0.9"),
        pytest.param("192.0.0.170", "ietf-protocol", id="ietf-nat64-discovery"),
        pytest.param("192.0.1.1", None, id="just-past-192.0.0.0/24"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_ssrf_classification(ip: str, reason: str | None) -> None:
    assert classify(ipaddress.ip_address(ip)) == reason


def test_ssrf_refuses_unless_allow_listed() -> None:
    none = AllowList.parse("")
    with pytest.raises(SsrfRefused, match=r"169\.254\.169\.254"):
        check_addresses("metadata.internal", ["169.254.169.254"], none)
    with pytest.raises(SsrfRefused):  # one bad address among good ones is enough
        check_addresses("mixed.example", ["93.184.216.34", "10.0.0.1"], none)
    with pytest.raises(SsrfRefused, match=r"6to4 \(link-local\)"):  # 169.254.169.254 inside
        check_addresses("sixtofour.example", ["2002:a9fe:a9fe::1"], none)
    assert check_addresses("example.com", ["93.184.216.34"], none)
    allow = AllowList.parse("127.0.0.1/32, receiver.local")
    assert check_addresses("localhost", ["127.0.0.1"], allow)
    assert check_addresses("receiver.local", ["10.1.2.3"], allow)
    with pytest.raises(SsrfRefused):
        check_addresses("localhost", ["127.0.0.2"], allow)
    with pytest.raises(ValueError):
        AllowList.parse("10.0.0.0/99")
