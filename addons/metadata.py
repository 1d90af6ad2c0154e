"""Pure checks for the GCE metadata server: every spelling of its names and link-local addresses.

Also pins a name to the address that was checked, so a second DNS answer cannot rebind it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from addons import hosts

METADATA_NAMES = ("metadata.google.internal", "metadata", "metadata.goog")
# Not link-local, yet metadata servers: GCE's for IPv6-only instances, and AWS's.
METADATA_IPV6 = frozenset(int(ipaddress.IPv6Address(a)) for a in ("fd20:ce::254", "fd00:ec2::254"))
Resolver = Callable[[str, int], Awaitable[list[str]]]

# IPv6 prefixes whose last 32 bits are an IPv4 address.
_LAST_32_BITS = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (RFC 4291, deprecated)
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped (RFC 4291)
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (RFC 2765, SIIT)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
)
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # NAT64 for local use (RFC 8215)
# Where RFC 6052 puts the IPv4 bytes for each prefix length a local-use NAT64 inside the /48 may
# use (byte 8 is always skipped). The proxy cannot know which one the network uses: all are read.
_RFC6052_BYTES = {
    48: (6, 7, 9, 10),
    56: (7, 9, 10, 11),
    64: (9, 10, 11, 12),
    96: (12, 13, 14, 15),
}
# ISATAP interface identifier (RFC 5214): 00-00-5E-FE or 02-00-5E-FE, then the IPv4 address.
_ISATAP_MASK, _ISATAP = 0xFCFFFFFF, 0x00005EFE


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse any spelling the resolver would accept (``2852039166``, ``0xa9.254.169.254``, ``[::1]``)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: a NUL or a surrogate in the text
        return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address ``ip`` may lead to through a translator or tunnel (RFC 4291, 6052, 6145, ...)."""
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]  # Teredo: server and client
    number, packed = int(ip), ip.packed
    if any(ip in net for net in _LAST_32_BITS):
        found.append(ipaddress.IPv4Address(number & 0xFFFFFFFF))
    if ip in _LOCAL_NAT64:
        found += [ipaddress.IPv4Address(bytes(packed[i] for i in at)) for at in _RFC6052_BYTES.values()]
    if (number >> 32) & _ISATAP_MASK == _ISATAP:
        found.append(ipaddress.IPv4Address(number & 0xFFFFFFFF))
    return [a for a in found if a is not None]


@functools.lru_cache(maxsize=4096)  # runs on every request and connection; hosts repeat
def is_metadata_host(host: str | None) -> bool:
    """The metadata server by name, or any link-local address (169.254/16, fe80::/10), in any spelling.

    IPv6 counts when it is a metadata server (``fd20:ce::254``) or carries a link-local IPv4 address
    (``::ffff:169.254.169.254``, NAT64, 6to4, Teredo, ISATAP; see ``embedded_ipv4``).
    """
    if not host:
        return False
    name = hosts.normalize_host(host)
    if name in METADATA_NAMES:
        return True
    ip = parse_ip(name)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_link_local or int(ip) in METADATA_IPV6:  # int(): with or without a %zone
            return True
        return any(a.is_link_local for a in embedded_ipv4(ip))
    return ip.is_link_local


class Pinned(NamedTuple):
    """Connect to ``address``: it is the address that was checked."""

    address: str


class Refusal(enum.Enum):
    """Why a connection may not be made; the value finishes "refuses to connect to HOST: ..."."""

    METADATA = "it is, or resolves to, the metadata server or another link-local address"
    UNRESOLVED = "the name could not be resolved"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def pin_address(host: str, port: int, resolver: Resolver = system_resolver) -> Pinned | Refusal:
    """The address to connect to for ``host``, or why it may not be reached.

    A name can resolve to the metadata server (``evil.example -> 169.254.169.254``) as easily as
    a client can spell its address, so the check runs on what the name resolves to, and the
    connection goes to the address that was checked (no second lookup to rebind). A name this
    lookup cannot resolve is refused: handing it back would let a second lookup answer unchecked.
    """
    if is_metadata_host(host):
        return Refusal.METADATA
    ip = parse_ip(hosts.normalize_host(host))
    if ip is not None:
        return Pinned(str(ip))  # the canonical form: nothing later re-reads ``0x7f.1`` differently
    try:
        addresses = await resolver(host, port)
    except Exception:  # noqa: BLE001 - any failure is "not resolved"; one escaping the hook fails open
        return Refusal.UNRESOLVED
    if not addresses:
        return Refusal.UNRESOLVED
    if any(is_metadata_host(a) for a in addresses):
        return Refusal.METADATA
    return Pinned(addresses[0])
