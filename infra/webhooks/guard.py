"""Where webhooks may go: only to public addresses, unless the operator allows more.

Checked twice: when a URL is registered (a clear 422 early) and before every attempt, after
resolving the name once — the request then connects to exactly the address that was checked
(see :mod:`infra.webhooks.sender`), so a DNS answer that changes between check and connect
(rebinding) cannot steer it to an internal service. Numeric host forms (``2130706433``,
``0177.0.0.1``, ``0x7f.1``, ``127.1``) are read by the same C library the connection would use,
and IPv6 addresses that embed an IPv4 one (mapped, 6to4, NAT64) are judged by that IPv4 address.

``CONCORD_WEBHOOK_ALLOW_HOSTS`` lists host names or addresses/CIDRs that may be targeted anyway
(tests on loopback, on-premise receivers on a private network).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolve = Callable[[str, int], Sequence[str]]

MAX_URL = 2048
#: A host name (IDNA-encoded) or IPv4 literal; IPv6 literals are checked by parsing them.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
#: Carrier-grade NAT (RFC 6598): not private in Python's sense, not public either.
SHARED = ipaddress.ip_network("100.64.0.0/10")
#: Cloud metadata services on otherwise public-looking addresses (link-local and private
#: ones such as 169.254.169.254, fd00:ec2::254, 100.100.100.200 are refused anyway).
METADATA = (ipaddress.ip_network("168.63.129.16/32"),)  # Azure wire server
#: Special-purpose ranges that Python 3.11 still counts as global (IANA: not globally
#: reachable): IETF protocol assignments (with Oracle's metadata 192.0.0.192), the old 6to4
#: relay anycast, the IPv6 discard prefix.
SPECIAL = tuple(
    ipaddress.ip_network(n) for n in ("192.0.0.0/24", "192.88.99.0/24", "100::/64", "2001::/23")
)
#: RFC 6052 NAT64 prefix: the last 32 bits are an IPv4 address.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
#: Names that mean this machine or a metadata service whatever DNS says.
BLOCKED_NAMES = ("localhost", "metadata", "metadata.google.internal", "instance-data")
_HTTPS = "the URL must use https (plain http only to hosts in CONCORD_WEBHOOK_ALLOW_HOSTS)"


class UnsafeTarget(ValueError):
    """A webhook URL that may not be called (the message says why, for a 422 or the log)."""


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks exempt from the address guard."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, raw: str) -> AllowList:
        """Comma-separated host names, addresses or CIDRs (``127.0.0.1,10.0.0.0/8,hooks.lan``)."""
        hosts: set[str] = set()
        networks: list[Network] = []
        for entry in (e.strip() for e in raw.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_ip(self, ip: IP) -> bool:
        return any(ip.version == n.version and ip in n for n in self.networks)


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: what to connect to and what to call it (Host header, SNI)."""

    url: httpx.URL
    host: str  # ASCII (IDNA) form, lower case, as sent in Host and SNI
    port: int

    @property
    def https(self) -> bool:
        return self.url.scheme == "https"

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.https else 80
        return name if self.port == default else f"{name}:{self.port}"


def blocked_reason(ip: IP) -> str | None:
    """Why an address may not be called, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            reason = blocked_reason(embedded)
            return f"{reason} (embedded in {ip})" if reason else None
    checks = (
        (any(ip in n for n in METADATA if n.version == ip.version), "a cloud metadata address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.version == 4 and ip in SHARED, "a shared (carrier-grade NAT) address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (any(ip in n for n in SPECIAL if n.version == ip.version), "a special-purpose address"),
        (not ip.is_global, "not a public address"),
    )
    return next((why for hit, why in checks if hit), None)


def parse(url: str, allow: AllowList) -> Target:
    """Check a URL's form: http(s), a host, a port, no credentials, no fragment."""
    if len(url) > MAX_URL:
        raise UnsafeTarget(f"the URL is longer than {MAX_URL} characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
        port = parsed.port
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        raise UnsafeTarget(f"not a valid URL ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        raise UnsafeTarget("the URL must start with https://")
    if not host:
        raise UnsafeTarget("the URL has no host")
    if not (HOSTNAME.fullmatch(host) or (":" in host and literal(host) is not None)):
        raise UnsafeTarget(f"not a valid host name: {host!r}")
    if parsed.userinfo:
        raise UnsafeTarget("credentials in the URL are not allowed")
    if port is not None and not 0 < port < 65536:
        raise UnsafeTarget("the port must be between 1 and 65535")
    if parsed.fragment:
        raise UnsafeTarget("the URL may not have a fragment")
    return Target(parsed, host, port or (443 if parsed.scheme == "https" else 80))


def literal(host: str) -> IP | None:
    """The address a host names without DNS, in any form the C library accepts, or None."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):
        return None
    return ipaddress.ip_address(str(infos[0][4][0]).split("%")[0])


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (raises OSError if none)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))


def check_address(target: Target, ip: IP, allow: AllowList) -> None:
    """Raise :class:`UnsafeTarget` unless ``ip`` (an address of the target) may be called.

    Plain http is for allowed hosts only: deliveries carry personal data.
    """
    if allow.allows_host(target.host) or allow.allows_ip(ip):
        return
    reason = blocked_reason(ip)
    if reason is not None:
        raise UnsafeTarget(f"{target.host} resolves to {ip}, {reason}")
    if not target.https:
        raise UnsafeTarget(_HTTPS)


def check_registration(url: str, allow: AllowList, resolve: Resolve = system_resolve) -> Target:
    """The check when a URL is registered: its form, and its addresses if it resolves now.

    A name that does not resolve yet is accepted (DNS may be set up later); every attempt
    checks again after resolving.
    """
    target = parse(url, allow)
    ip = literal(target.host)
    if ip is not None:
        check_address(target, ip, allow)
        return target
    _check_name(target.host, allow)
    try:
        addresses = resolve(target.host, target.port)
    except (OSError, UnicodeError, ValueError):
        addresses = []
    if not addresses and not (target.https or allow.allows_host(target.host)):
        raise UnsafeTarget(_HTTPS)
    for address in addresses:
        check_address(target, ipaddress.ip_address(address), allow)
    return target


def pin(target: Target, allow: AllowList, resolve: Resolve = system_resolve) -> IP:
    """Resolve once and return the address to connect to; every address must pass."""
    ip = literal(target.host)
    if ip is None:
        _check_name(target.host, allow)
        try:
            addresses = [ipaddress.ip_address(a) for a in resolve(target.host, target.port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise UnsafeTarget(f"{target.host} does not resolve ({exc})") from None
        if not addresses:
            raise UnsafeTarget(f"{target.host} does not resolve")
    else:
        addresses = [ip]
    for address in addresses:
        check_address(target, address, allow)
    return addresses[0]


def _check_name(host: str, allow: AllowList) -> None:
    name = host.rstrip(".")
    if allow.allows_host(name):
        return
    for blocked in BLOCKED_NAMES:
        if name == blocked or name.endswith("." + blocked):
            raise UnsafeTarget(f"{host} names this machine or a metadata service")
