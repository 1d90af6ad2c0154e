"""Pure checks for the GCE metadata server: every spelling of its names and link-local addresses.

Also pins a name to the address that was checked, so a second DNS answer cannot rebind it.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable

from addons import hosts

METADATA_NAMES = ("metadata.google.internal", "metadata", "metadata.goog")
Resolver = Callable[[str, int], Awaitable[list[str]]]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse any spelling the resolver would accept (``2852039166``, ``0xa9.254.169.254``, ``[::1]``)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@functools.lru_cache(maxsize=4096)  # runs on every request and connection; hosts repeat
def is_metadata_host(host: str | None) -> bool:
    """The GCE metadata server by name, or any link-local address (169.254/16, fe80::/10, fd00:ec2::254)."""
    if not host:
        return False
    name = hosts.normalize_host(host)
    if name in METADATA_NAMES:
        return True
    ip = parse_ip(name)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 inside IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), 6to4, NAT64 (64:ff9b::/96).
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and (ip in _NAT64 or ip in _V4_COMPATIBLE):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            ip = embedded
    return ip.is_link_local or ip == ipaddress.ip_address("fd00:ec2::254")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def pin_address(host: str, port: int, resolver: Resolver = system_resolver) -> str | None:
    """The address to connect to for ``host``, or None when it may not be reached.

    A name can resolve to the metadata server (``evil.example -> 169.254.169.254``) as easily as
    a client can spell its address, so the check runs on what the name resolves to, and the
    connection goes to the address that was checked (no second lookup to rebind). A name that
    does not resolve is left to fail as it would.
    """
    if is_metadata_host(host):
        return None
    if parse_ip(host) is not None:
        return host
    try:
        addresses = await resolver(host, port)
    except (OSError, UnicodeError):
        return host
    if not addresses:
        return host
    if any(is_metadata_host(a) for a in addresses):
        return None
    return addresses[0]
