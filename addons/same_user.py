"""Same user only on loopback: which uid owns the client's socket, and may it use the proxy (Linux).

A loopback listener is reachable by every local user and every container in the host's network
namespace. TCP carries no caller identity (SO_PEERCRED is for Unix sockets), but the kernel
records, for every socket, the uid that created it, and a loopback connection's client socket
lives in our own network namespace: its row is keyed by the 4-tuple we see from the other side
(the client's local address:port is our peer; its remote address:port is our socket name).

Two ways to read it, the same kernel table: an exact sock_diag netlink lookup of that one
4-tuple (what ``ss`` uses; tens of µs), and /proc/net/tcp and tcp6 (the fallback; reading them
walks the kernel's whole connection hash table, milliseconds per read however few sockets there
are: benchmarks/same_user.py). At start ``detect()`` proves one of them on a connection of
its own; where neither works (not Linux, no /proc, no netlink) it says so once and every
connection is let through, as before this check existed.

Rows the kernel keeps without an owner (TIME_WAIT, FIN_WAIT2 after close, orphans: inode 0,
uid column 0 whoever had them), a row that vanished between accept and lookup, and a 4-tuple
listed with two owners all mean "unknown owner", and an unknown owner is refused.

Loaded alone (``mitmdump -s addons/same_user.py``) it checks the proxy port when ``listen_host``
is loopback.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from mitmproxy import connection, ctx, exceptions

from addons import options

logger = logging.getLogger(__name__)

ANY = "any"
MAX_UID = 2**32 - 2  # (uid_t)-1 means "no uid"
PROC_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
LOG_INTERVAL = 60.0  # one log line per refused uid per this many seconds
LABELLED_UIDS = 16  # distinct uids that get their own metric label; the rest count as "other"
# What a refused client reads: a plain request gets it as the answer, a CONNECT as the answer to
# the CONNECT; either way the socket closes after it.
REFUSAL = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
LINGER_SECONDS = 2.0  # how long a refused client may take to close its side
LINGER_BYTES = 256 * 1024  # what it may send meanwhile (dropped unread)
MAX_LINGERING = 64  # refused connections waiting at once; more are closed at once

Endpoint = tuple[str, int]  # (normalized address text, port)
Lookup = Callable[[Endpoint, Endpoint], "int | None"]


# -- the rule ---------------------------------------------------------------------------------------

class AllowUid(NamedTuple):
    """``--allow-uid``: extra uids, or any uid at all (the check off)."""

    uids: frozenset[int] = frozenset()
    any_uid: bool = False


def parse_allow_uid(values: Sequence[str]) -> AllowUid:
    """``--allow-uid`` values: decimal uids (repeatable or comma-separated), or ``any`` alone.

    Raises:
        ValueError: for anything else, naming the value.
    """
    uids: set[int] = set()
    any_uid = False
    for value in values:
        for part in str(value).split(","):
            text = part.strip()
            if not text:
                continue
            if text.lower() == ANY:
                any_uid = True
            elif text.isascii() and text.isdigit() and len(text) <= 10 and int(text) <= MAX_UID:
                uids.add(int(text))
            else:
                raise ValueError(f"{text!r} is not a numeric uid or 'any' (`id -u NAME` prints a user's uid)")
    if any_uid and uids:
        raise ValueError("'any' already admits every uid; give either 'any' or uids")
    return AllowUid(frozenset(uids), any_uid)


def allowed(uid: int | None, own_uid: int, allowed_uids: frozenset[int] | set[int]) -> bool:
    """May the owner of a client socket use the proxy? Its own uid, or one named; root is not
    special (only when the proxy runs as root or root is named); an unknown owner never."""
    return uid is not None and (uid == own_uid or uid in allowed_uids)


def is_loopback_host(host: str) -> bool:
    """Is this listen host a loopback address (``localhost``, 127/8, ``::1``)?"""
    if host == "localhost":
        return True
    try:
        return _ip(host).is_loopback
    except ValueError:
        return False


# -- /proc/net/tcp ------------------------------------------------------------------------------------

def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address with any zone (``%lo``) dropped and IPv4-mapped IPv6 turned into IPv4."""
    address = ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def endpoint(address: Any) -> Endpoint | None:
    """A socket address as asyncio/mitmproxy give it (``(host, port)`` or the IPv6 4-tuple)."""
    try:
        host, port = address[0], int(address[1])
        if not 0 <= port <= 65535:
            return None
        return str(_ip(host)), port
    except (TypeError, ValueError, IndexError):
        return None


def _decode_address(text: str, byteorder: str = sys.byteorder) -> str:
    """``0100007F`` -> ``127.0.0.1``: the kernel prints each 32-bit word of the address as a
    host-order number, so on little-endian machines each word's bytes come out reversed."""
    raw = bytes.fromhex(text)
    if byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(_ip(str(ipaddress.ip_address(raw))))


def _encode_address(address: str, v6: bool, byteorder: str = sys.byteorder) -> str:
    """The inverse of ``_decode_address``: how /proc/net/tcp (or tcp6, IPv4 mapped) prints it."""
    ip = ipaddress.ip_address(address)
    if v6 and isinstance(ip, ipaddress.IPv4Address):
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    raw = ip.packed
    if byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return raw.hex().upper()


_HEX = frozenset("0123456789abcdefABCDEF")


def _parse_endpoint(text: str, byteorder: str) -> Endpoint | None:
    address, sep, port = text.partition(":")
    if (not sep or len(address) not in (8, 32) or len(port) != 4
            or not _HEX.issuperset(address) or not _HEX.issuperset(port)):
        return None
    try:
        return _decode_address(address, byteorder), int(port, 16)
    except ValueError:
        return None


def _parse_row(line: str, byteorder: str = sys.byteorder) -> tuple[Endpoint, Endpoint, int | None] | None:
    """One row: (local, remote, owner uid or None when no open socket owns it); None if malformed."""
    fields = line.split()
    if len(fields) < 10 or not fields[0].endswith(":") or not fields[0][:-1].isdigit():
        return None
    local = _parse_endpoint(fields[1], byteorder)
    remote = _parse_endpoint(fields[2], byteorder)
    uid_text, inode_text = fields[7], fields[9]
    if (local is None or remote is None or not uid_text.isascii() or not uid_text.isdigit()
            or not inode_text.isascii() or not inode_text.isdigit() or len(uid_text) > 10):
        return None
    uid = int(uid_text)
    if uid > MAX_UID + 1:
        return None
    # inode 0: no file holds the socket (TIME_WAIT and FIN_WAIT2 leftovers print uid 0 for anyone's).
    return local, remote, (uid if int(inode_text) != 0 else None)


def parse_proc_net_tcp(text: str, byteorder: str = sys.byteorder) -> dict[tuple[Endpoint, Endpoint], int]:
    """/proc/net/tcp or tcp6 -> {(local, remote): uid of the socket's owner}.

    IPv4-mapped IPv6 addresses come out as IPv4, so a client's socket is found whichever family it
    used. Left out: the header, malformed rows, rows no open socket owns, and any 4-tuple listed
    with different owners (or with an owner and without one): not knowing must not mean "yes".
    """
    owners: dict[tuple[Endpoint, Endpoint], int | None] = {}
    seen: set[tuple[Endpoint, Endpoint]] = set()
    for line in text.splitlines():
        row = _parse_row(line, byteorder)
        if row is None:
            continue
        local, remote, uid = row
        key = (local, remote)
        if key in seen and owners.get(key) != uid:
            owners[key] = None
        else:
            owners[key] = uid
        seen.add(key)
    return {k: v for k, v in owners.items() if v is not None}


def owner_uid(peer: Any, table_texts: Iterable[str], local: Any = None,
              byteorder: str = sys.byteorder) -> int | None:
    """The uid owning the client socket whose local address is ``peer`` (our view of the client)
    and, when given, whose remote address is ``local`` (our socket's own address).

    ``table_texts``: the contents of /proc/net/tcp and tcp6 (an iterable: it stops at the first
    table that lists the socket, so a lazy one reads tcp6 only when needed). Finds the rows by
    their printed address before parsing only those, with the same rules as
    ``parse_proc_net_tcp``. None when no owned row matches, or the matches disagree.
    """
    client = endpoint(peer)
    server = endpoint(local) if local is not None else None
    if client is None or (local is not None and server is None):
        return None
    v4 = isinstance(ipaddress.ip_address(client[0]), ipaddress.IPv4Address)
    needles = []
    for v6 in ((False, True) if v4 else (True,)):
        needle = f"{_encode_address(client[0], v6, byteorder)}:{client[1]:04X} "
        if server is not None:
            needle += f"{_encode_address(server[0], v6, byteorder)}:{server[1]:04X} "
        needles.append(needle)
    for text in table_texts:
        found: set[int | None] = set()
        for needle in needles:
            start = text.find(needle)
            while start != -1:
                line_start = text.rfind("\n", 0, start) + 1
                line_end = text.find("\n", start)
                row = _parse_row(text[line_start:line_end if line_end != -1 else len(text)], byteorder)
                if row is not None and row[0] == client and (server is None or row[1] == server):
                    found.add(row[2])
                start = text.find(needle, start + 1)
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def _read_tables(paths: Sequence[str] = PROC_TABLES) -> Iterable[str]:
    """The tables, read one at a time as ``owner_uid`` asks; a table that cannot be read is empty."""
    for path in paths:
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                yield f.read()
        except OSError:
            yield ""


def proc_owner(peer: Endpoint, local: Endpoint) -> int | None:
    """The fallback lookup: /proc/net/tcp, then tcp6."""
    return owner_uid(peer, _read_tables(), local)


# -- sock_diag netlink: one exact lookup --------------------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI")  # inet_diag_req_v2 up to its inet_diag_sockid
_SOCKID_PORTS = struct.Struct("!HH")
_MSG_UID = struct.Struct("=II")  # idiag_uid, idiag_inode
_MSG_UID_OFFSET = _NLMSGHDR.size + 4 + 48 + 12  # family..retrans, sockid, expires/rqueue/wqueue


def _diag_request(peer: Endpoint, local: Endpoint, seq: int) -> bytes:
    both_v4 = all(isinstance(ipaddress.ip_address(a), ipaddress.IPv4Address) for a, _ in (peer, local))
    family = socket.AF_INET if both_v4 else socket.AF_INET6

    def packed(address: str) -> bytes:
        ip = ipaddress.ip_address(address)
        if not both_v4 and isinstance(ip, ipaddress.IPv4Address):
            ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
        return ip.packed.ljust(16, b"\0")

    # From the client socket's side: its source is our peer, its destination our own address.
    body = (_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
            + _SOCKID_PORTS.pack(peer[1], local[1]) + packed(peer[0]) + packed(local[0])
            + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, seq, 0) + body


def parse_diag_reply(data: bytes, seq: int) -> int | None:
    """The owner uid in a sock_diag reply; None for "no such socket" or a socket no file holds.

    Raises:
        OSError: the kernel refused the request (not the answer "not found"), or the reply is not
            one (too short, another sequence number).
    """
    if len(data) < _NLMSGHDR.size:
        raise OSError("short sock_diag reply")
    length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data)
    if got_seq != seq or length > len(data):
        raise OSError("unexpected sock_diag reply")
    if kind == _NLMSG_ERROR:
        if len(data) < _NLMSGHDR.size + 4:
            raise OSError("short sock_diag error")
        errno_ = -struct.unpack_from("=i", data, _NLMSGHDR.size)[0]
        if errno_ == 2:  # ENOENT: no socket has this 4-tuple (it closed, or never was ours to see)
            return None
        raise OSError(errno_, os.strerror(errno_) if errno_ > 0 else "sock_diag error")
    if kind != _SOCK_DIAG_BY_FAMILY or len(data) < _MSG_UID_OFFSET + _MSG_UID.size:
        raise OSError("unexpected sock_diag message")
    uid, inode = _MSG_UID.unpack_from(data, _MSG_UID_OFFSET)
    return uid if inode != 0 else None


def diag_owner(peer: Endpoint, local: Endpoint) -> int | None:
    """The kernel's answer for this one 4-tuple (sock_diag, as ``ss`` asks).

    Raises:
        OSError: netlink or sock_diag is unavailable or refused.
    """
    seq = 1  # a new socket per lookup: no earlier reply can be waiting on it
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.send(_diag_request(peer, local, seq))
        # The kernel answers inside send(): the reply is queued already, never wait on the loop.
        return parse_diag_reply(nl.recv(8192, socket.MSG_DONTWAIT), seq)


# -- which lookup works here ----------------------------------------------------------------------------

class Method(NamedTuple):
    name: str  # "sock_diag", "/proc/net/tcp", or "" when none works
    lookup: Lookup | None
    reason: str  # why none works
    slow: bool = False  # milliseconds per lookup: run it off the event loop


def _self_test(lookup: Lookup, family: socket.AddressFamily = socket.AF_INET) -> str | None:
    """Look up a loopback connection of our own; None when the answer is our uid, else why not."""
    with socket.socket(family) as server, socket.socket(family) as client:
        server.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
        server.listen(1)
        client.connect(server.getsockname())
        accepted, peer = server.accept()
        with accepted:
            try:
                uid = lookup(endpoint(peer) or ("", 0), endpoint(accepted.getsockname()) or ("", 0))
            except OSError as e:
                return e.strerror or str(e)
    return None if uid == os.geteuid() else f"it reported uid {uid} for a socket of uid {os.geteuid()}"


@functools.cache
def detect() -> Method:
    """Which lookup works on this machine (proved on a connection of our own); decided once."""
    if not sys.platform.startswith("linux"):
        method = Method("", None, f"this is {sys.platform}, not Linux")
    else:
        reasons = []
        for name, lookup in (("sock_diag", diag_owner), ("/proc/net/tcp", proc_owner)):
            try:
                problem = _self_test(lookup)
            except OSError:  # no IPv4 loopback (an IPv6-only namespace)
                try:
                    problem = _self_test(lookup, socket.AF_INET6)
                except OSError as e:
                    problem = e.strerror or str(e)
            if problem is None:
                return Method(name, lookup, "", slow=lookup is proc_owner)
            reasons.append(f"{name}: {problem}")
        method = Method("", None, "; ".join(reasons))
    logger.warning("cannot tell which user owns a loopback connection here (%s): every local user "
                   "can use loopback listeners; use --proxy-auth to limit who may", method.reason)
    return method


# -- the gate every loopback listener shares --------------------------------------------------------------

class Gate:
    """Decides, counts and logs for every loopback listener: the proxy port, the admin endpoints,
    ``run``'s metadata endpoint. ``refusals`` (metric label -> count) is read by Metrics."""

    def __init__(self, allow: AllowUid | None = None, *, own_uid: int | None = None,
                 method: Method | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.allow = allow or AllowUid()
        self.own_uid = os.geteuid() if own_uid is None else own_uid
        self._method = method
        self._clock = clock
        self._logged: dict[int | None, float] = {}
        self.refusals: dict[str, int] = {}
        self.lingering = 0  # refused connections waiting for their client to close

    @property
    def method(self) -> Method:
        if self._method is None:
            self._method = detect()
        return self._method

    def prepare(self) -> None:
        """Find the lookup now, so a machine without one is reported at start, not at a connection."""
        _ = self.method

    @property
    def active(self) -> bool:
        """Does the check run? Not with ``--allow-uid any``, nor where no lookup works."""
        return not self.allow.any_uid and self.method.lookup is not None

    def admit(self, peer: Any, local: Any, listener: str) -> bool:
        """May this loopback connection be served? Refusals are counted and logged (rate-limited)."""
        if not self.active:
            return True
        client, server = endpoint(peer), endpoint(local)
        return self._decide(self._owner(client, server), client, listener)

    async def check(self, peer: Any, local: Any, listener: str) -> bool:
        """``admit`` for the event loop: a slow lookup (/proc) runs in a worker thread."""
        if not self.active or not self.method.slow:
            return self.admit(peer, local, listener)
        client, server = endpoint(peer), endpoint(local)
        return self._decide(await asyncio.to_thread(self._owner, client, server), client, listener)

    def _owner(self, client: Endpoint | None, server: Endpoint | None) -> int | None:
        lookup = self.method.lookup
        if lookup is None or client is None or server is None:
            return None
        try:
            return lookup(client, server)
        except (OSError, ValueError) as e:  # fail closed: a lookup that breaks refuses
            logger.debug("owner lookup for %s failed: %s", client, e)
            return None

    def _decide(self, uid: int | None, client: Endpoint | None, listener: str) -> bool:
        if allowed(uid, self.own_uid, self.allow.uids):
            return True
        self._refused(uid, client, listener)
        return False

    def _refused(self, uid: int | None, client: Endpoint | None, listener: str) -> None:
        label = "unknown" if uid is None else str(uid)
        if label not in self.refusals and len(self.refusals) >= LABELLED_UIDS:
            label = "other"
        self.refusals[label] = self.refusals.get(label, 0) + 1
        now = self._clock()
        last = self._logged.get(uid)
        if last is not None and now - last < LOG_INTERVAL:
            return
        if len(self._logged) >= 1024:  # bounded: forget uids not seen for a minute
            self._logged = {k: t for k, t in self._logged.items() if now - t < LOG_INTERVAL}
        self._logged[uid] = now
        who = f"{client[0]}:{client[1]}" if client else "an unknown address"
        if uid is None:
            logger.warning("refused a connection to the %s from %s: no open socket of any user "
                           "owns it (it closed before it could be looked up)", listener, who)
        else:
            logger.warning("refused a connection to the %s from %s: it belongs to uid %d, not this "
                           "proxy's uid %d; --allow-uid %d admits it",
                           listener, who, uid, self.own_uid, uid)


async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: Gate) -> None:
    """Answer a bare 403, end our side, and wait briefly for the client to end its side.

    Closing a socket whose client has sent bytes we never read makes the kernel answer with a
    reset, which can destroy the 403 before the client reads it. So: 403, FIN, read and drop
    what the client sends until it closes (at most ``LINGER_BYTES``, ``LINGER_SECONDS``), then
    close. At most ``MAX_LINGERING`` refused connections wait at once; beyond that they close at
    once (a stranger must not hold sockets open by being refused).
    """
    try:
        writer.write(REFUSAL)
        if gate.lingering >= MAX_LINGERING or not writer.can_write_eof():
            return
        writer.write_eof()
        gate.lingering += 1
        try:
            await asyncio.wait_for(_discard_until_eof(reader), LINGER_SECONDS)
        finally:
            gate.lingering -= 1
    except (OSError, RuntimeError, TimeoutError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    received = 0
    while received < LINGER_BYTES and (chunk := await reader.read(65536)):
        received += len(chunk)


async def admit_stream(gate: Gate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       listener: str) -> bool:
    """For our own asyncio servers on loopback: True to serve; else refused (403) and closed."""
    if await gate.check(writer.get_extra_info("peername"), writer.get_extra_info("sockname"), listener):
        return True
    await refuse(reader, writer, gate)
    return False


class SameUser:
    """The proxy port's check, first in the pipeline (see ``Components.ordered``)."""

    def __init__(self, proxyserver: Any = None, gate: Gate | None = None) -> None:
        # mitmproxy's Proxyserver addon, whose transports carry the refusal; the program passes it
        # (addons/composition.py); loaded alone with -s it is found when the proxy runs.
        self.proxyserver = proxyserver
        self.gate = gate or Gate()
        self.loopback = True

    def load(self, loader: Any) -> None:
        options.declare(loader, "allow_uid")

    def configure(self, updated: set[str]) -> None:
        if "allow_uid" in updated:
            try:
                self.gate.allow = parse_allow_uid(ctx.options.allow_uid)
            except ValueError as e:
                raise exceptions.OptionsError(f"allow_uid: {e}") from e
        if "listen_host" in updated:
            self.loopback = is_loopback_host(ctx.options.listen_host)

    def running(self) -> None:
        if self.proxyserver is None and ctx.master is not None:  # standalone (-s) only
            self.proxyserver = ctx.master.addons.get("proxyserver")
        if self.loopback and not self.gate.allow.any_uid:
            self.gate.prepare()

    async def client_connected(self, client: connection.Client) -> None:
        if not self.loopback or client.error:
            return
        if await self.gate.check(client.peername, client.sockname, "proxy port"):
            return
        client.error = "refused: another user's connection"  # mitmproxy then closes it
        handler = self.proxyserver.connections.get(client.id) if self.proxyserver is not None else None
        io = handler.transports.get(client) if handler is not None else None
        # mitmproxy has not started reading this connection yet: the refusal owns it until then.
        if io is not None and io.reader is not None and io.writer is not None:
            await refuse(io.reader, io.writer, self.gate)


addons = [SameUser()]
