"""Webhook subscriptions: which events go where. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

Format = str  # "standard" | "slack"


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    event_types: tuple[str, ...]
    format: Format = "standard"
    enabled: bool = True
    severities: tuple[str, ...] | None = None
    rule_ids: tuple[str, ...] | None = None
    account_ids: tuple[str, ...] | None = None

    def matches(self, event: dict[str, Any], severity: str | None) -> bool:
        """Does ``event`` (a standard event dict) go to this subscription?

        Filters: ``severities`` (a band change counts as critical when red, warning
        when yellow, info when green), ``rule_ids`` (only alert events carry a rule;
        a subscription filtering on rules receives no band changes) and ``account_ids``.
        """
        if not self.enabled or event["type"] not in self.event_types:
            return False
        data = event["data"]
        if self.severities is not None and severity not in self.severities:
            return False
        if self.rule_ids is not None:
            rule = data.get("rule")
            if rule is None or rule["id"] not in self.rule_ids:
                return False
        return self.account_ids is None or data["account_id"] in self.account_ids


def active_secrets(
    secret: str, previous: str | None, previous_expires_at: datetime | None, now: datetime
) -> list[str]:
    """Secrets that sign a delivery now: the current one, and the previous one until
    its overlap after a rotation ends."""
    out = [secret]
    if previous and previous_expires_at is not None and now < previous_expires_at:
        out.append(previous)
    return out
