"""Webhook bodies (SPEC §7). Pure: builds the event dict and encodes it, standard
(Standard Webhooks JSON) or Slack (incoming-webhook text + blocks).

The standard body is kept under :data:`MAX_BODY_BYTES` by trimming the
explanation, which is the only unbounded part.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import orjson

from services.alerts.rules import Rule, Value
from shared.health import HealthSnapshot

MAX_BODY_BYTES = 20 * 1024
EVENT_TYPES = ("alert.fired", "alert.resolved", "score.band_changed")
BAND_SEVERITY = {"red": "critical", "yellow": "warning", "green": "info"}


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def explain(rule: Rule | None, value: Value, snapshot: HealthSnapshot) -> str:
    """A human sentence plus the measures that cost the most points."""
    parts = []
    if rule is not None:
        held = f" for {rule.for_evaluations} evaluations" if rule.for_evaluations > 1 else ""
        parts.append(f"{rule.kpi} is {value!r} ({rule.op} {rule.threshold!r}){held}.")
    if snapshot.score is not None:
        parts.append(f"Health score {snapshot.score:.1f} ({snapshot.band}).")
    if snapshot.score_delta_7d is not None:
        parts.append(f"Change over 7 days: {snapshot.score_delta_7d:+.1f}.")
    worst = sorted(
        (m for m in snapshot.measures if m.points is not None),
        key=lambda m: m.left_on_table,
        reverse=True,
    )[:5]
    if worst:
        parts.append(
            "Most points lost on: "
            + ", ".join(f"{m.kpi}={m.value!r} (−{m.left_on_table:.1f})" for m in worst)
            + "."
        )
    return " ".join(parts)


def alert_event(
    event_type: str,
    *,
    rule: Rule,
    alert_id: str,
    value: Value,
    fired_at: datetime,
    at: datetime,
    snapshot: HealthSnapshot,
) -> dict[str, Any]:
    """The standard event for ``alert.fired`` / ``alert.resolved``."""
    data: dict[str, Any] = {
        "account_id": snapshot.account_id,
        "account_name": snapshot.account_name,
        "rule": {"id": rule.id, "name": rule.name, "severity": rule.severity},
        "kpi": rule.kpi,
        "value": value,
        "threshold": rule.threshold,
        "score": snapshot.score,
        "band": snapshot.band,
        "explanation": explain(rule, value, snapshot),
        "alert_id": alert_id,
        "fired_at": _iso(fired_at),
    }
    if event_type == "alert.resolved":
        data["resolve_threshold"] = rule.effective_resolve_threshold
        data["resolved_at"] = _iso(at)
    return {"type": event_type, "timestamp": _iso(at), "data": data}


def band_event(snapshot: HealthSnapshot, previous_band: str, at: datetime) -> dict[str, Any]:
    return {
        "type": "score.band_changed",
        "timestamp": _iso(at),
        "data": {
            "account_id": snapshot.account_id,
            "account_name": snapshot.account_name,
            "previous_band": previous_band,
            "band": snapshot.band,
            "score": snapshot.score,
            "score_delta_7d": snapshot.score_delta_7d,
            "explanation": explain(None, None, snapshot),
        },
    }


def encode_standard(event: dict[str, Any]) -> bytes:
    """JSON bytes under 20 KB: the explanation is cut (with "…") when needed."""
    body = orjson.dumps(event)
    if len(body) <= MAX_BODY_BYTES:
        return body
    data = dict(event["data"])
    text = str(data.get("explanation") or "")
    excess = len(body) - MAX_BODY_BYTES
    # every character removed removes at least one byte of JSON
    data["explanation"] = text[: max(0, len(text) - excess - 8)] + "…"
    body = orjson.dumps({**event, "data": data})
    if len(body) > MAX_BODY_BYTES:  # something else is huge (e.g. the account name)
        data["explanation"] = ""
        data["account_name"] = str(data.get("account_name") or "")[:200]
        body = orjson.dumps({**event, "data": data})
    return body


def _mrkdwn(text: str) -> str:
    """``text`` as Slack shows it literally: Slack reads ``&``, ``<`` and ``>`` as
    its own markup (a name "A <b> & C" would lose "<b>", and a ">" would end a link
    label early), so they are escaped as its documentation says."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(event: dict[str, Any], dashboard_url: str) -> dict[str, Any]:
    """A Slack incoming-webhook message: account, rule, value vs threshold, score and
    band, and a link to the account page. Names customers and operators chose (the
    account's, the rule's) are escaped for Slack's markup."""
    d = event["data"]
    account = _mrkdwn(d.get("account_name") or d["account_id"])
    # the id is one path segment: "/", "?", "#", "%", "|" or ">" in it must neither
    # change the page the link opens nor end Slack's <url|label> early
    link = f"{dashboard_url.rstrip('/')}/accounts/{quote(d['account_id'], safe='')}"
    score = "n/a" if d.get("score") is None else f"{d['score']:.1f}"
    if event["type"] == "score.band_changed":
        text = f"{account}: health band {d['previous_band']} → {d['band']} (score {score})"
        fields = [
            f"*Account*\n<{link}|{account}>",
            f"*Band*\n{d['previous_band']} → {d['band']}",
            f"*Score*\n{score}",
        ]
    else:
        verb = "fired" if event["type"] == "alert.fired" else "resolved"
        rule = {**d["rule"], "name": _mrkdwn(d["rule"]["name"])}
        emoji = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:"}
        icon = ":white_check_mark:" if verb == "resolved" else emoji.get(rule["severity"], "")
        text = (
            f"{icon} {rule['name']} {verb} for {account}: "
            f"{d['kpi']} = {d['value']!r} (threshold {d['threshold']!r})"
        ).strip()
        fields = [
            f"*Account*\n<{link}|{account}>",
            f"*Rule*\n{rule['name']} ({rule['severity']})",
            f"*Value vs threshold*\n{d['kpi']} = {d['value']!r} vs {d['threshold']!r}",
            f"*Score and band*\n{score} ({d.get('band') or 'n/a'})",
        ]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f[:2000]} for f in fields]},
    ]
    if d.get("explanation"):
        blocks.append(
            {"type": "context", "elements": [{"type": "mrkdwn", "text": d["explanation"][:2000]}]}
        )
    blocks.append(
        {
            "type": "actions",
            "elements": [
                {
                    "type": "button",
                    "text": {"type": "plain_text", "text": "Open account"},
                    "url": link,
                }
            ],
        }
    )
    return {"text": text, "blocks": blocks}


def encode(event: dict[str, Any], fmt: str, dashboard_url: str) -> bytes:
    if fmt == "slack":
        return orjson.dumps(slack_message(event, dashboard_url))
    return encode_standard(event)
