"""SSRF defence for webhooks: which addresses a webhook may reach.

Only public (globally routable) addresses, unless a network is allowed by name
(`Settings.webhook_allow_networks`, e.g. `127.0.0.0/8` for a receiver on the same host). Loopback,
private, link-local (the cloud metadata service at 169.254.169.254 included), carrier-grade NAT,
multicast and reserved ranges are all "not global". The API checks a literal IP at submit; the
webhooks worker resolves the host once per attempt and checks every address before it connects.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def allowed_networks(setting: str) -> list[Network]:
    """Parse `Settings.webhook_allow_networks` (comma-separated CIDRs)."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in setting.split(",") if part.strip()]


def address_problem(address: IPAddress, allowed: list[Network]) -> str | None:
    """Why a webhook may not connect to `address`, or None when it may."""
    mapped = getattr(address, "ipv4_mapped", None)
    checked = mapped or address  # ::ffff:10.0.0.1 is 10.0.0.1
    if any(checked in network for network in allowed):
        return None
    if checked.is_global and not checked.is_multicast:
        return None
    return f"address {address} is not public (loopback, private, link-local or reserved)"


def literal_address_problem(url: str, allowed: list[Network]) -> str | None:
    """The API's check at submit: a URL naming an IP (or `localhost`) that would be refused anyway."""
    host = urlsplit(url).hostname or ""
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return address_problem(ipaddress.ip_address("127.0.0.1"), allowed)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolved and checked at each delivery attempt
    return address_problem(address, allowed)


def resolve_checked(host: str, port: int, allowed: list[Network]) -> IPAddress:
    """Resolve `host` once and return the address to connect to; every address the name resolves to
    must be allowed (so a name that also points inside cannot be raced into it). Raises ValueError
    naming the refused address, OSError when the name does not resolve."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise OSError(f"{host} resolves to no address")
    for address in addresses:
        if (problem := address_problem(address, allowed)) is not None:
            raise ValueError(f"refused: {host} -> {problem}")
    return addresses[0]
