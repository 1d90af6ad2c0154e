"""The same-user rule, the /proc/net/tcp parser, the sock_diag reply, and the gate, as units."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons import same_user
from addons.same_user import (
    AllowUid,
    Gate,
    Method,
    allowed,
    owner_uid,
    parse_allow_uid,
    parse_proc_net_tcp,
)

NOBODY = 65534
HEADER4 = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout "
           "inode\n")
HEADER6 = ("  sl  local_address                         remote_address                        st tx_queue "
           "rx_queue tr tm->when retrnsmt   uid  timeout inode\n")


def row(local: str, remote: str, uid: int | str = 1000, inode: int | str = 12345, state: str = "01",
        sl: int = 0) -> str:
    """One line as the kernel prints it (uid and inode as given, so tests can make them hostile)."""
    return (f"{sl:4d}: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:>5} "
            f"       0 {inode} 1 0000000000000000 20 4 30 10 -1\n")


def v4(address: str, port: int) -> str:
    return f"{same_user._encode_address(address, False, 'little')}:{port:04X}"


def v6(address: str, port: int) -> str:
    return f"{same_user._encode_address(address, True, 'little')}:{port:04X}"


CLIENT = ("127.0.0.1", 40000)
PROXY = ("127.0.0.1", 8080)


# -- the rule ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("uid", "own", "extra", "ok"), [
    (1000, 1000, set(), True),  # the proxy's own user
    (1001, 1000, set(), False),  # another user
    (1001, 1000, {1001}, True),  # named
    (0, 1000, set(), False),  # root is not special
    (0, 1000, {0}, True),  # ... unless named
    (0, 0, set(), True),  # a proxy running as root serves root
    (NOBODY, 0, set(), False),
    (None, 1000, {1000}, False),  # unknown owner: never
    (None, 0, {0}, False),
])
def test_allowed(uid: int | None, own: int, extra: set[int], ok: bool):
    assert allowed(uid, own, frozenset(extra)) is ok


@pytest.mark.parametrize(("values", "expected"), [
    ([], AllowUid()),
    (["65534"], AllowUid(frozenset({65534}))),
    (["0"], AllowUid(frozenset({0}))),
    (["1,2", " 3 "], AllowUid(frozenset({1, 2, 3}))),
    (["any"], AllowUid(frozenset(), True)),
    (["ANY"], AllowUid(frozenset(), True)),
    (["4294967294"], AllowUid(frozenset({4294967294}))),
])
def test_parse_allow_uid(values: list[str], expected: AllowUid):
    assert parse_allow_uid(values) == expected


@pytest.mark.parametrize("values", [
    ["-1"], ["nobody"], ["4294967295"], ["99999999999"], ["any", "5"], ["any,5"], ["１２"], ["0x10"],
    ["1.5"], ["5 6"], ["²"],
])
def test_parse_allow_uid_refuses(values: list[str]):
    with pytest.raises(ValueError):
        parse_allow_uid(values)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.1", False),
    ("localhost.evil.test", False),
])
def test_is_loopback_host(host: str, loopback: bool):
    assert same_user.is_loopback_host(host) is loopback


# -- /proc/net/tcp --------------------------------------------------------------------------------------------

def test_addresses_decode_on_both_byte_orders():
    assert same_user._decode_address("0100007F", "little") == "127.0.0.1"
    assert same_user._decode_address("7F000001", "big") == "127.0.0.1"
    assert same_user._decode_address("00000000000000000000000001000000", "little") == "::1"
    assert same_user._decode_address("0000000000000000FFFF00000100007F", "little") == "127.0.0.1"  # mapped
    assert same_user._decode_address("00000000000000000000FFFF7F000001", "big") == "127.0.0.1"
    for address in ("127.0.0.1", "10.1.2.3", "::1", "fe80::1:2", "2001:db8::ff00:42:8329"):
        for order in ("little", "big"):
            for wide in (False, True) if "." in address else (True,):
                assert same_user._decode_address(same_user._encode_address(address, wide, order), order) == address


@pytest.mark.parametrize(("text", "expected"), [
    ("", {}),
    (HEADER4, {}),
    (HEADER4 + row(v4(*CLIENT), v4(*PROXY), uid=1000), {(CLIENT, PROXY): 1000}),
    # IPv6 socket, IPv4-mapped addresses: keyed as IPv4
    (HEADER6 + row(v6(*CLIENT), v6(*PROXY), uid=7), {(CLIENT, PROXY): 7}),
    (HEADER6 + row(v6("::1", 40000), v6("::1", 8080), uid=7), {(("::1", 40000), ("::1", 8080)): 7}),
    # TIME_WAIT and FIN_WAIT2 leftovers print uid 0 whoever owned them: no owner
    (row(v4(*CLIENT), v4(*PROXY), uid=0, inode=0, state="06"), {}),
    (row(v4(*CLIENT), v4(*PROXY), uid=0, inode=0, state="05"), {}),
    # the same 4-tuple twice: the same owner is fine, two owners (or owned and unowned) are not
    (row(v4(*CLIENT), v4(*PROXY), uid=5) + row(v4(*CLIENT), v4(*PROXY), uid=5, sl=1), {(CLIENT, PROXY): 5}),
    (row(v4(*CLIENT), v4(*PROXY), uid=5) + row(v4(*CLIENT), v4(*PROXY), uid=6, sl=1), {}),
    (row(v4(*CLIENT), v4(*PROXY), uid=5) + row(v4(*CLIENT), v4(*PROXY), uid=0, inode=0), {}),
    (row(v4(*CLIENT), v4(*PROXY), uid=0, inode=0) + row(v4(*CLIENT), v4(*PROXY), uid=5), {}),
    (row(v4(*CLIENT), v4(*PROXY), uid=5) + row(v4(*CLIENT), v4(*PROXY), uid=6)
     + row(v4(*CLIENT), v4(*PROXY), uid=5), {}),
    # hostile or broken rows are skipped, the good row next to them is kept
    (row(v4(*CLIENT), v4(*PROXY), uid="-1") + row(v4("127.0.0.1", 2), v4(*PROXY), uid=9),
     {(("127.0.0.1", 2), PROXY): 9}),
    (row(v4(*CLIENT), v4(*PROXY), uid="１２"), {}),  # non-ASCII digits
    (row(v4(*CLIENT), v4(*PROXY), uid="99999999999"), {}),
    (row(v4(*CLIENT), v4(*PROXY), uid="1e3"), {}),
    (row(v4(*CLIENT), v4(*PROXY), inode="x"), {}),
    (row("0100007G:9C40", v4(*PROXY)), {}),  # not hex
    (row("0100007F:9C4", v4(*PROXY)), {}),  # short port
    (row("100007F:9C40", v4(*PROXY)), {}),  # short address
    (row("0100007F9C40", v4(*PROXY)), {}),  # no colon
    (row("0100007F:9C40:1", v4(*PROXY)), {}),
    (row(" " + v4(*CLIENT), v4(*PROXY)).replace("  ", " "), {(CLIENT, PROXY): 1000}),  # spacing varies
    (row(v4(*CLIENT), v4(*PROXY)).replace("   0: ", "   x: "), {}),
    (row(v4(*CLIENT), v4(*PROXY)).replace("   0: ", "   0 "), {}),
    (" ".join(row(v4(*CLIENT), v4(*PROXY)).split()[:9]), {}),  # truncated
    ("\x00\xff garbage \u2028 line\n" * 3, {}),
    (row(v4(*CLIENT), v4(*PROXY)).replace("\n", "\r\n"), {(CLIENT, PROXY): 1000}),
])
def test_parse_proc_net_tcp(text: str, expected: dict):
    assert parse_proc_net_tcp(text, "little") == expected


def test_owner_uid_matches_the_whole_4_tuple():
    table = HEADER4 + row(v4(*CLIENT), v4(*PROXY), uid=1000) + row(v4(*CLIENT), v4("127.0.0.1", 9), uid=2, sl=1)
    assert owner_uid(CLIENT, [table], PROXY, "little") == 1000
    assert owner_uid(CLIENT, [table], ("127.0.0.1", 9), "little") == 2
    assert owner_uid(CLIENT, [table], None, "little") is None  # the same port to two peers: two owners
    assert owner_uid(("127.0.0.1", 40001), [table], PROXY, "little") is None
    # Our own accepted socket is the mirror row (local = proxy): it must not answer for the client.
    mirror = HEADER4 + row(v4(*PROXY), v4(*CLIENT), uid=0)
    assert owner_uid(CLIENT, [mirror], PROXY, "little") is None


def test_owner_uid_finds_a_mapped_socket_in_tcp6_and_reads_it_only_when_needed():
    tcp = HEADER4 + row(v4("127.0.0.1", 1), v4(*PROXY), uid=1)
    tcp6 = HEADER6 + row(v6(*CLIENT), v6(*PROXY), uid=NOBODY)
    read: list[str] = []

    def tables() -> Iterator[str]:
        for name, text in (("tcp", tcp), ("tcp6", tcp6)):
            read.append(name)
            yield text

    assert owner_uid(("::ffff:127.0.0.1", CLIENT[1], 0, 0), tables(), ("::ffff:127.0.0.1", 8080), "little") == NOBODY
    assert read == ["tcp", "tcp6"]
    read.clear()
    assert owner_uid(("127.0.0.1", 1), tables(), PROXY, "little") == 1
    assert read == ["tcp"]


@pytest.mark.parametrize("peer", [None, (), ("127.0.0.1",), ("not an address", 1), ("127.0.0.1", 70000),
                                  ("127.0.0.1", "x")])
def test_owner_uid_of_a_strange_peer_is_unknown(peer: object):
    assert owner_uid(peer, [row(v4(*CLIENT), v4(*PROXY))], PROXY) is None


def test_owner_uid_agrees_with_the_parser_on_a_thousand_sockets():
    rng = random.Random(7)
    lines = [HEADER4]
    for i in range(1000):
        local = (f"127.0.{rng.randrange(3)}.{rng.randrange(1, 4)}", rng.randrange(1024, 65536))
        remote = ("127.0.0.1", rng.choice((8080, 443, 9090)))
        lines.append(row(v4(*local), v4(*remote), uid=rng.choice((0, 1000, NOBODY)),
                         inode=rng.choice((0, 1, 2, 3)), sl=i))
    text = "".join(lines)
    table = parse_proc_net_tcp(text, "little")
    for line in lines[1:]:
        parsed = same_user._parse_row(line, "little")
        assert parsed is not None
        local, remote, _ = parsed
        assert owner_uid(local, [text], remote, "little") == table.get((local, remote))


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="no /proc/net/tcp here")
def test_the_real_tables_parse_and_agree():
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as c:
        conn, _ = server.accept()
        with conn:
            texts = [Path(p).read_text() for p in same_user.PROC_TABLES]
            table = {}
            for text in texts:
                table.update(parse_proc_net_tcp(text))
            key = (same_user.endpoint(c.getsockname()), same_user.endpoint(c.getpeername()))
            assert table[key] == os.geteuid()
            assert owner_uid(c.getsockname(), texts, c.getpeername()) == os.geteuid()


# -- sock_diag ---------------------------------------------------------------------------------------------------

def _reply(kind: int, payload: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(payload), kind, 0, seq, 0) + payload


def _diag_msg(uid: int, inode: int) -> bytes:
    return bytes(4) + bytes(48) + bytes(12) + struct.pack("=II", uid, inode)


def test_diag_reply_parsing():
    assert same_user.parse_diag_reply(_reply(20, _diag_msg(NOBODY, 99)), 1) == NOBODY
    assert same_user.parse_diag_reply(_reply(20, _diag_msg(0, 0)), 1) is None  # TIME_WAIT: no owner
    assert same_user.parse_diag_reply(_reply(2, struct.pack("=i", -2)), 1) is None  # ENOENT
    for bad in (_reply(2, struct.pack("=i", -1)), _reply(2, b""), b"\x00" * 8, _reply(20, _diag_msg(1, 1), seq=2),
                _reply(20, b"\x00" * 10), _reply(3, _diag_msg(1, 1))):
        with pytest.raises(OSError):
            same_user.parse_diag_reply(bad, 1)


# -- both lookups against real sockets of another user --------------------------------------------------------

@pytest.fixture
def nobody_connection() -> Iterator[tuple[tuple[str, int], tuple[str, int]]]:
    """A connection whose client socket uid 65534 made (curl, kept waiting for an answer)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        curl = subprocess.Popen(["curl", "-s", "-m", "30", f"http://127.0.0.1:{port}/"], user=NOBODY,
                                group=NOBODY, extra_groups=[], stdout=subprocess.DEVNULL)
        conn, peer = server.accept()
        with conn:
            yield peer, conn.getsockname()
        curl.wait(30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.parametrize("lookup", [same_user.diag_owner, same_user.proc_owner], ids=["sock_diag", "proc"])
def test_lookups_name_the_user_who_made_the_socket(lookup, nobody_connection):
    peer, local = nobody_connection
    assert lookup(same_user.endpoint(peer), same_user.endpoint(local)) == NOBODY
    # Looking from the wrong side finds our own accepted socket, owned by us: never the answer.
    assert lookup(same_user.endpoint(local), same_user.endpoint(peer)) == os.geteuid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.parametrize("lookup", [same_user.diag_owner, same_user.proc_owner], ids=["sock_diag", "proc"])
def test_lookups_find_an_ipv6_socket_with_a_mapped_address(lookup):
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket(socket.AF_INET6) as client:
        client.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
        conn, peer = server.accept()
        with conn:
            assert lookup(same_user.endpoint(peer), same_user.endpoint(conn.getsockname())) == os.geteuid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
@pytest.mark.parametrize("lookup", [same_user.diag_owner, same_user.proc_owner], ids=["sock_diag", "proc"])
def test_a_socket_that_is_gone_has_no_owner(lookup):
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        conn, peer = server.accept()
        local = conn.getsockname()
        # The client goes away with a reset: no TIME_WAIT row is left behind for its 4-tuple.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        with conn:
            assert lookup(same_user.endpoint(peer), same_user.endpoint(local)) is None


def test_detect_proves_a_lookup_here():
    method = same_user.detect()
    if not sys.platform.startswith("linux"):
        assert method.lookup is None
        return
    assert method.name in ("sock_diag", "/proc/net/tcp") and method.lookup is not None


def test_detect_says_once_when_nothing_works(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(sys, "platform", "darwin")
    with caplog.at_level(logging.WARNING, logger="addons.same_user"):
        method = same_user.detect.__wrapped__()
    assert method.lookup is None and "darwin" in method.reason
    assert [r.getMessage() for r in caplog.records if "cannot tell which user" in r.getMessage()]
    assert Gate(method=method).admit(CLIENT, PROXY, "proxy port")  # today's behaviour


def test_detect_falls_back_to_proc_when_sock_diag_fails(monkeypatch: pytest.MonkeyPatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("Linux only")

    def no_netlink(peer, local):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(same_user, "diag_owner", no_netlink)
    method = same_user.detect.__wrapped__()
    assert method.name == "/proc/net/tcp" and method.slow


# -- the gate ------------------------------------------------------------------------------------------------------

class FakeLookup:
    """Answers from a dict; a missing key is a socket that vanished before the lookup."""

    def __init__(self, owners: dict[tuple[str, int], int | Exception]) -> None:
        self.owners = owners
        self.calls = 0

    def __call__(self, peer, local):
        self.calls += 1
        value = self.owners.get(peer)
        if isinstance(value, Exception):
            raise value
        return value


NOBODY_ELSE = AllowUid()


def gate_with(owners: dict, allow: AllowUid = NOBODY_ELSE, own_uid: int = 1000,
              clock=None) -> tuple[Gate, FakeLookup]:
    lookup = FakeLookup(owners)
    kwargs = {"clock": clock} if clock else {}
    return Gate(allow, own_uid=own_uid, method=Method("fake", lookup, ""), **kwargs), lookup


@pytest.mark.parametrize(("owner", "allow", "admitted"), [
    (1000, AllowUid(), True),
    (1001, AllowUid(), False),
    (1001, AllowUid(frozenset({1001})), True),
    (0, AllowUid(), False),
    (0, AllowUid(frozenset({0})), True),
    (None, AllowUid(), False),  # vanished between accept and lookup
    (OSError("netlink broke"), AllowUid(), False),  # a broken lookup refuses, it does not crash
    (ValueError("bad table"), AllowUid(), False),
    (1001, AllowUid(frozenset(), True), True),
])
def test_gate_decides(owner, allow: AllowUid, admitted: bool, caplog: pytest.LogCaptureFixture):
    gate, lookup = gate_with({CLIENT: owner} if owner is not None else {}, allow)
    with caplog.at_level(logging.WARNING, logger="addons.same_user"):
        assert gate.admit(CLIENT, PROXY, "proxy port") is admitted
    refused_lines = [r for r in caplog.records if r.getMessage().startswith("refused")]
    assert len(refused_lines) == (0 if admitted else 1)
    assert lookup.calls == (0 if allow.any_uid else 1)
    if not admitted:
        assert sum(gate.refusals.values()) == 1


def test_gate_logs_each_uid_once_a_minute_and_counts_every_refusal(caplog: pytest.LogCaptureFixture):
    now = [0.0]
    owners = {("127.0.0.1", p): 2000 + p % 2 for p in range(1, 11)}
    gate, _ = gate_with(owners, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="addons.same_user"):
        for peer in owners:
            assert not gate.admit(peer, PROXY, "proxy port")
        assert not gate.admit(("127.0.0.1", 99), PROXY, "proxy port")  # vanished
        assert not gate.admit(("127.0.0.1", 98), PROXY, "proxy port")
        now[0] = 61.0
        assert not gate.admit(("127.0.0.1", 1), PROXY, "proxy port")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # uid 2000, uid 2001, unknown; uid 2001 again a minute later
    assert sum("uid 2001" in line for line in lines) == 2
    assert "--allow-uid 2000" in lines[0] or "--allow-uid 2000" in lines[1]
    assert gate.refusals == {"2000": 5, "2001": 6, "unknown": 2}


def test_gate_metric_labels_are_bounded():
    owners = {("127.0.0.1", p): 5000 + p for p in range(1, 41)}
    gate, _ = gate_with(owners)
    for peer in owners:
        gate.admit(peer, PROXY, "proxy port")
    assert len(gate.refusals) == same_user.LABELLED_UIDS + 1
    assert gate.refusals["other"] == 40 - same_user.LABELLED_UIDS


@pytest.mark.parametrize("slow", [False, True])
def test_gate_check_runs_a_slow_lookup_off_the_event_loop(slow: bool):
    threads: list[str] = []

    def lookup(peer, local):
        threads.append(threading.current_thread().name)
        return 1001

    gate = Gate(own_uid=1000, method=Method("fake", lookup, "", slow=slow))
    assert asyncio.run(gate.check(CLIENT, PROXY, "proxy port")) is False
    assert (threads[0] != threading.main_thread().name) is slow
    assert gate.refusals == {"1001": 1}


def test_gate_without_a_lookup_lets_everyone_in():
    gate = Gate(own_uid=1000, method=Method("", None, "not Linux"))
    assert not gate.active and gate.admit(CLIENT, PROXY, "proxy port")


# -- the addon --------------------------------------------------------------------------------------------------

def test_addon_options():
    addon = same_user.SameUser(gate=Gate(own_uid=1000, method=Method("fake", FakeLookup({}), "")))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, allow_uid=["65534", "0"], listen_host="127.0.0.1")
        assert addon.gate.allow == AllowUid(frozenset({0, NOBODY}))
        assert addon.loopback
        tctx.configure(addon, listen_host="0.0.0.0")
        assert not addon.loopback
        with pytest.raises(exceptions.OptionsError, match="allow_uid"):
            tctx.configure(addon, allow_uid=["nobody"])


def test_addon_refuses_in_client_connected_and_skips_non_loopback_listens():
    from mitmproxy.test import tflow

    lookup = FakeLookup({("127.0.0.1", 22222): 1001})
    addon = same_user.SameUser(gate=Gate(own_uid=1000, method=Method("fake", lookup, "")))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, listen_host="127.0.0.1")
        client = tflow.tclient_conn()
        client.peername, client.sockname = ("127.0.0.1", 22222), ("127.0.0.1", 8080)
        asyncio.run(addon.client_connected(client))
        assert client.error and "another user" in client.error
        tctx.configure(addon, listen_host="0.0.0.0")
        other = tflow.tclient_conn()
        other.peername, other.sockname = ("127.0.0.1", 22222), ("127.0.0.1", 8080)
        asyncio.run(addon.client_connected(other))
        assert other.error is None and lookup.calls == 1


def test_addon_loads_as_script():
    with taddons.context() as tctx:
        tctx.script(str(Path(same_user.__file__)))
