"""SSRF guard: which resolved addresses a webhook may connect to. Pure.

Refused unless allow-listed: loopback, private (RFC 1918 and friends), link-local
(incl. the cloud metadata address 169.254.169.254), CGNAT (100.64.0.0/10),
unique-local IPv6 (fc00::/7), site-local IPv6 (fec0::/10, deprecated but still
routed by some networks), IPv4-mapped IPv6 (::ffff:0:0/96) and 6to4 (2002::/16),
both judged by the IPv4 address inside too, NAT64, the IETF protocol assignments
192.0.0.0/24, multicast, unspecified and reserved addresses. The adapter
(``delivery.py``) resolves the host itself, checks every address and connects
to a checked one, so DNS rebinding between check and connect cannot slip through.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")
_IETF_PROTOCOL = ipaddress.ip_network("192.0.0.0/24")  # is_global is True for a few of them


class SsrfRefused(Exception):
    """The target resolves to an address webhooks may not reach."""


def classify(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return _embedding("ipv4-mapped", ip.ipv4_mapped)
        if ip.sixtofour is not None:  # 2002:AABB:CCDD::/48 is the IPv4 AA.BB.CC.DD's
            return _embedding("6to4", ip.sixtofour)
        if ip in _NAT64:
            return "nat64"
        if ip in _UNIQUE_LOCAL:
            return "unique-local"
        if ip in _SITE_LOCAL:
            return "site-local"
    elif ip in _IETF_PROTOCOL:
        return "ietf-protocol"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "cgnat"
    if ip.is_multicast:
        return "multicast"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def _embedding(kind: str, inner: ipaddress.IPv4Address) -> str:
    """An IPv6 address carrying an IPv4 one is as public as that one: it is refused
    always, and names the embedded address's reason when that one is not public."""
    reason = classify(inner)
    return kind + (f" ({reason})" if reason else "")


@dataclass(frozen=True)
class AllowList:
    """Hosts (exact names) and networks allowed despite the guard."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> AllowList:
        """``"127.0.0.1/32, localhost, 10.1.0.0/16"`` → an allow-list. ValueError on bad CIDRs."""
        hosts: set[str] = set()
        nets: list[IPNetwork] = []
        for item in (p.strip() for p in text.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                if "/" in item:
                    raise ValueError(f"invalid network in the allow-list: {item!r}") from None
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(nets))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


def check_addresses(host: str, addresses: list[str], allow: AllowList) -> list[IPAddress]:
    """The addresses of ``host`` that may be connected to, in order. Raises
    :class:`SsrfRefused` when any of them is refused (a name resolving to both a
    public and a private address is refused: the connect could pick either)."""
    if not addresses:
        raise SsrfRefused(f"{host} does not resolve")
    ips = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    if allow.allows_host(host):
        return ips
    for ip in ips:
        reason = classify(ip)
        if reason is not None and not allow.allows_ip(ip):
            raise SsrfRefused(
                f"{host} resolves to {ip} ({reason}); refused by the SSRF guard "
                "(allow it with HEALTHSCORE_WEBHOOK_ALLOWLIST)"
            )
    return ips
