"""gRPC through the proxy (issue 10 part B): real grpcio clients and google-cloud-pubsub under `run`.

The fake Google serves gRPC with grpcio (fakegoogle/pubsub_server.py): Pub/Sub and a raw-bytes test
service ``fakegoogle.testing.v1.Echo`` on pubsub.googleapis.com (a valid token needed), the same
test service on the non-Google grpc.example.test (its own CA), and a raw HTTP/2 upstream that
resets streams or drops its connection (fakegoogle/pubsub_faults.py) under faults.googleapis.com.
Clients reach the proxy with grpcio's own HTTP CONNECT support (``grpc.http_proxy``, what the
``grpc_proxy`` variable sets), and nothing here waits on a clock: each step waits for the event
that proves the previous one (a message, a call the fake saw, an audit line).
"""

from __future__ import annotations

import datetime
import json
import queue
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from fakegoogle import FakeGoogle
from fakegoogle.pubsub_server import UNAUTHENTICATED_MESSAGE
from proxy.placeholder import PLACEHOLDER_PREFIX
from tests.audit_records import read_records, wait_for_records
from tests.proxyproc import RunningProxy
from tests.wraphelp import run_wrapped

ECHO = "/fakegoogle.testing.v1.Echo/"
FAULTS = "/fakegoogle.testing.v1.Faults/"
PUBSUB = "pubsub.googleapis.com"
WAIT = 20.0  # the longest any one step may take before the test fails


def framed(message: bytes) -> int:
    """Bytes one message takes on the wire: gRPC's 5-byte prefix plus the message."""
    return 5 + len(message)


# -- fixtures and helpers --------------------------------------------------------------------------

@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


def assert_no_token_in(path: Path, fake: FakeGoogle) -> None:
    text = path.read_text() if path.exists() else ""
    leaked = [t[:12] for t in fake.issued_tokens if t in text]
    assert not leaked, f"token(s) starting {leaked} appeared in {path}"


@pytest.fixture
def gproxy(proxy_factory: Any, fake: FakeGoogle, audit_path: Path) -> Iterator[RunningProxy]:
    """The proxy with an audit log, the fault server and the non-Google gRPC origin resolvable."""
    pp = proxy_factory(
        "--audit-log", str(audit_path),
        "--resolve", "faults.googleapis.com={}:{}".format(*fake.grpc_faults_addr),
        "--resolve", "grpc.example.test={}:{}".format(*fake.grpc_other_addr),
    )
    pp.wait_for_line("token available")
    yield pp
    assert_no_token_in(audit_path, fake)  # the proxy's own output is checked for the whole session


@pytest.fixture
def channels() -> Iterator[list[grpc.Channel]]:
    made: list[grpc.Channel] = []
    yield made
    for channel in made:
        channel.close()


def via_proxy(pp: RunningProxy, channels: list[grpc.Channel], host: str = PUBSUB, ca: Path | None = None) -> grpc.Channel:
    """A channel to ``host:443`` through the proxy (HTTP CONNECT), trusting ``ca`` (the proxy's CA).

    Its own connection: grpcio shares connections between channels of the same target by default.
    """
    credentials = grpc.ssl_channel_credentials((ca or pp.ca_cert).read_bytes())
    channel = grpc.secure_channel(f"{host}:443", credentials, options=[
        ("grpc.http_proxy", pp.url), ("grpc.use_local_subchannel_pool", 1)])
    channels.append(channel)
    return channel


def direct(fake: FakeGoogle, channels: list[grpc.Channel], addr: tuple[str, int], host: str) -> grpc.Channel:
    """A channel straight to the fake (no proxy): what a client would see without us."""
    credentials = grpc.ssl_channel_credentials(fake.google_ca_pem.read_bytes())
    channel = grpc.secure_channel("{}:{}".format(*addr), credentials, options=[
        ("grpc.ssl_target_name_override", host), ("grpc.use_local_subchannel_pool", 1)])
    channels.append(channel)
    return channel


def calls_seen(fake: FakeGoogle, server: str = "pubsub") -> list[Any]:
    return [r for r in fake.requests if r.server == server]


def assert_only_valid_tokens(fake: FakeGoogle, server: str = "pubsub") -> None:
    seen = calls_seen(fake, server)
    assert seen, f"the fake's {server} server saw no call"
    assert all(r.token_valid for r in seen), [(r.path, r.token_valid) for r in seen]
    assert not any(PLACEHOLDER_PREFIX in (r.authorization or "") for r in seen)


class Feed:
    """A request iterator the test drives message by message (for client and bidi streaming)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()

    def send(self, message: bytes) -> None:
        self._queue.put(message)

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while (message := self._queue.get()) is not None:
            yield message


# -- the four kinds of call, trailers and metadata -------------------------------------------------

def test_unary_call_gets_the_token_and_keeps_metadata_and_trailers(gproxy: RunningProxy, fake: FakeGoogle,
                                                                   channels: list[grpc.Channel],
                                                                   audit_path: Path) -> None:
    binary = bytes(range(256))  # every byte value, NUL and 0xff included: -bin metadata is base64 on the wire
    request = b"hello \x00 gRPC"
    response, call = via_proxy(gproxy, channels).unary_unary(ECHO + "Unary").with_call(
        request, metadata=[("x-echo-text", "plain text"), ("x-echo-data-bin", binary)], timeout=WAIT)
    assert response == request
    assert call.code() == grpc.StatusCode.OK
    assert dict(call.trailing_metadata()) == {"x-echo-text": "plain text", "x-echo-data-bin": binary}
    [seen] = calls_seen(fake)
    assert seen.path == ECHO + "Unary" and seen.token_valid and seen.authorization.startswith("Bearer ")
    [record] = read_records(audit_path)  # written before the answer went out
    assert record["api_method"] == "fakegoogle.testing.v1.Echo.Unary" and record["service"] == "pubsub"
    assert record["grpc_status"] == 0 and record["status"] == 200 and record["auth"] == "injected"
    assert record["http_version"] == "HTTP/2.0"
    assert (record["request_bytes"], record["response_bytes"]) == (framed(request), framed(request))


def test_error_status_message_and_binary_trailers_reach_the_client(gproxy: RunningProxy,
                                                                   channels: list[grpc.Channel],
                                                                   audit_path: Path) -> None:
    message = "nicht gefunden: Grüße, 100% sicher"  # grpc-message is percent-encoded UTF-8 on the wire
    with pytest.raises(grpc.RpcError) as caught:
        via_proxy(gproxy, channels).unary_unary(ECHO + "Unary")(
            b"x", metadata=[("x-fail-code", "5"), ("x-fail-message-bin", message.encode()),
                            ("x-echo-detail-bin", b"\x00\x01\xfe\xff")], timeout=WAIT)
    error = caught.value
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == message
    assert ("x-echo-detail-bin", b"\x00\x01\xfe\xff") in [tuple(m) for m in error.trailing_metadata()]
    [record] = read_records(audit_path)
    assert record["grpc_status"] == 5 and record["status"] == 200


def test_server_streaming_sends_each_message_as_it_comes(gproxy: RunningProxy, fake: FakeGoogle,
                                                         channels: list[grpc.Channel], audit_path: Path) -> None:
    channel = via_proxy(gproxy, channels)
    call = channel.unary_stream(ECHO + "ServerStream")(b"3", metadata=[("x-gate", "first")], timeout=WAIT)
    # The server holds the rest until the test has the first message: a proxy that buffered the
    # response would deliver nothing until the deadline.
    assert next(call) == b"message 0"
    # Meanwhile another call on the same connection goes through, and only it is on record so far.
    assert channel.unary_unary(ECHO + "Unary")(b"meanwhile", timeout=WAIT) == b"meanwhile"
    assert [r["api_method"] for r in read_records(audit_path)] == ["fakegoogle.testing.v1.Echo.Unary"]
    fake.grpc_calls.open_gate("first")
    assert list(call) == [b"message 1", b"message 2"]
    assert call.code() == grpc.StatusCode.OK
    unary, stream = read_records(audit_path)  # one record per call, written when it ended
    assert stream["api_method"] == "fakegoogle.testing.v1.Echo.ServerStream" and stream["grpc_status"] == 0
    assert stream["duration_ms"] >= unary["duration_ms"]  # the unary call ran inside the stream's life
    assert stream["request_bytes"] == framed(b"3")
    assert stream["response_bytes"] == sum(framed(b"message %d" % i) for i in range(3))


def test_client_streaming_passes_every_message(gproxy: RunningProxy, channels: list[grpc.Channel],
                                               audit_path: Path) -> None:
    messages = [b"first", b"", b"x" * 200_000, b"last"]  # an empty one, and one larger than any held body
    answer = via_proxy(gproxy, channels).stream_unary(ECHO + "ClientStream")(iter(messages), timeout=WAIT)
    assert answer == b"%d messages, %d bytes" % (len(messages), sum(map(len, messages)))
    [record] = read_records(audit_path)
    assert record["api_method"] == "fakegoogle.testing.v1.Echo.ClientStream" and record["grpc_status"] == 0
    assert record["request_bytes"] == sum(map(framed, messages))
    assert record["response_bytes"] == framed(answer)


def test_bidi_streaming_ping_pong(gproxy: RunningProxy, channels: list[grpc.Channel], audit_path: Path) -> None:
    feed = Feed()
    call = via_proxy(gproxy, channels).stream_stream(ECHO + "Bidi")(
        iter(feed), metadata=[("x-echo-round-bin", b"\xffend")], timeout=WAIT)
    sent = [b"ping %d" % i for i in range(5)]
    for message in sent:
        # Each reply arrives before the next message is sent: both directions stream.
        feed.send(message)
        assert next(call) == message
    feed.close()
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK
    assert dict(call.trailing_metadata()) == {"x-echo-round-bin": b"\xffend"}
    [record] = read_records(audit_path)
    assert record["api_method"] == "fakegoogle.testing.v1.Echo.Bidi"
    assert record["request_bytes"] == record["response_bytes"] == sum(map(framed, sent))


# -- deadlines and cancellation --------------------------------------------------------------------

def test_deadline_reaches_the_upstream(gproxy: RunningProxy, fake: FakeGoogle, channels: list[grpc.Channel],
                                       audit_path: Path) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        via_proxy(gproxy, channels).unary_unary(ECHO + "Wait")(b"", timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    started = fake.grpc_calls.wait_for("started", "Wait")
    assert started is not None
    deadline = started[2]
    assert deadline is not None and 0 < deadline <= 1.1, deadline  # grpc-timeout crossed the proxy
    assert fake.grpc_calls.wait_for("ended", "Wait") is not None  # and the upstream call ended too
    [record] = wait_for_records(audit_path, 1)
    assert record["api_method"] == "fakegoogle.testing.v1.Echo.Wait"
    # Both ends hold the same deadline (grpc-timeout is re-sent as the time left), so which one acts
    # first is a race of a few milliseconds: the client's RST_STREAM (an error) or the server's
    # DEADLINE_EXCEEDED trailers (status 4). Either way the call failed and was recorded so.
    assert "error" in record or record.get("grpc_status") == 4, record
    assert record["duration_ms"] >= 900


def test_client_cancel_of_a_unary_call_resets_the_upstream_stream(gproxy: RunningProxy, fake: FakeGoogle,
                                                                  channels: list[grpc.Channel],
                                                                  audit_path: Path) -> None:
    future = via_proxy(gproxy, channels).unary_unary(ECHO + "Wait").future(b"", timeout=60)
    assert fake.grpc_calls.wait_for("started", "Wait") is not None
    assert future.cancel()
    assert fake.grpc_calls.wait_for("ended", "Wait") == ("ended", "Wait", "cancelled")
    [record] = wait_for_records(audit_path, 1)
    assert "CANCEL" in record["error"] and "grpc_status" not in record


def test_client_cancel_of_a_bidi_stream_resets_the_upstream_stream(gproxy: RunningProxy, fake: FakeGoogle,
                                                                   channels: list[grpc.Channel],
                                                                   audit_path: Path) -> None:
    feed = Feed()
    # x-hold: the server then waits for the stream's end without reading, so a half-close would
    # not end it; only a reset does.
    call = via_proxy(gproxy, channels).stream_stream(ECHO + "Bidi")(iter(feed), metadata=[("x-hold", "1")],
                                                                   timeout=60)
    feed.send(b"hello")
    assert next(call) == b"hello"
    call.cancel()
    assert fake.grpc_calls.wait_for("ended", "Bidi") == ("ended", "Bidi", "cancelled")
    [record] = wait_for_records(audit_path, 1)
    assert "CANCEL" in record["error"]
    assert record["request_bytes"] == record["response_bytes"] == framed(b"hello")


# -- credentials -----------------------------------------------------------------------------------

def test_without_a_valid_token_unauthenticated_reaches_the_client(gproxy: RunningProxy, fake: FakeGoogle,
                                                                  channels: list[grpc.Channel],
                                                                  audit_path: Path) -> None:
    fake.revoke_all()  # the proxy still holds its token; Google no longer takes it
    with pytest.raises(grpc.RpcError) as caught:
        via_proxy(gproxy, channels).unary_unary(ECHO + "Unary")(b"x", timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == UNAUTHENTICATED_MESSAGE
    [seen] = calls_seen(fake)
    assert seen.authorization and not seen.token_valid
    [record] = read_records(audit_path)
    assert record["grpc_status"] == 16 and record["auth"] == "injected"


def test_unauthenticated_grpc_call_makes_the_next_one_use_a_fresh_token(gproxy: RunningProxy, fake: FakeGoogle,
                                                                       channels: list[grpc.Channel]) -> None:
    """gRPC rejects a token with HTTP 200 and grpc-status 16, never a 401: the token is still dropped."""
    channel = via_proxy(gproxy, channels)
    fake.revoke_all()
    before = fake.token_fetches
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary(ECHO + "Unary")(b"x", timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert channel.unary_unary(ECHO + "Unary")(b"y", timeout=WAIT) == b"y"
    assert fake.token_fetches - before == 1
    assert calls_seen(fake)[-1].token_valid


def test_no_token_to_be_had_fails_the_call_and_nothing_goes_upstream(proxy_factory: Any, fake: FakeGoogle,
                                                                      channels: list[grpc.Channel],
                                                                      audit_path: Path) -> None:
    fake.set_token_failure("invalid_grant")
    pp = proxy_factory("--audit-log", str(audit_path))
    for call in (lambda ch: ch.unary_unary(ECHO + "Unary")(b"x", timeout=WAIT),
                 lambda ch: list(ch.stream_stream(ECHO + "Bidi")(iter([b"x"]), timeout=WAIT))):
        with pytest.raises(grpc.RpcError) as caught:
            call(via_proxy(pp, channels))
        # A trailers-only UNAVAILABLE (retryable, as the 502 it stands for), with the proxy's sentence.
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not get a Google access token" in caught.value.details()
        assert "invalid_grant" in caught.value.details()
    assert calls_seen(fake) == []
    unary, bidi = wait_for_records(audit_path, 2)
    assert unary["auth"] == bidi["auth"] == "failed" and "invalid_grant" in unary["error"]
    assert_no_token_in(audit_path, fake)


def test_tunnelled_grpc_host_is_untouched(gproxy: RunningProxy, fake: FakeGoogle, channels: list[grpc.Channel],
                                          audit_path: Path) -> None:
    # The client trusts only the origin's own CA: a certificate of the proxy's would fail.
    channel = via_proxy(gproxy, channels, host="grpc.example.test", ca=fake.other_ca_pem)
    response, call = channel.unary_unary(ECHO + "Unary").with_call(
        b"tunnelled", metadata=[("x-echo-key-bin", b"\x00\xff")], timeout=WAIT)
    assert response == b"tunnelled" and dict(call.trailing_metadata()) == {"x-echo-key-bin": b"\x00\xff"}
    feed = Feed()
    stream = channel.stream_stream(ECHO + "Bidi")(iter(feed), timeout=WAIT)
    feed.send(b"ping")
    assert next(stream) == b"ping"
    feed.close()
    assert list(stream) == [] and stream.code() == grpc.StatusCode.OK
    seen = calls_seen(fake, "grpc-other")
    assert [r.path for r in seen] == [ECHO + "Unary", ECHO + "Bidi"]
    assert all(r.authorization is None for r in seen)
    assert read_records(audit_path) == []  # tunnelled hosts are not audited


# -- bad input: an upstream that fails, a client that sends garbage ---------------------------------

@pytest.mark.parametrize("method", ["ResetAfterOne", "CloseAfterOne"])
def test_upstream_failure_mid_stream_ends_that_stream_only(gproxy: RunningProxy, fake: FakeGoogle,
                                                           channels: list[grpc.Channel], audit_path: Path,
                                                           method: str) -> None:
    channel = via_proxy(gproxy, channels, host="faults.googleapis.com")
    unary = channel.unary_unary(FAULTS + "Unary")
    call = channel.unary_stream(FAULTS + method)(b"one", metadata=[("x-gate", method)], timeout=WAIT)
    assert next(call) == b"one"
    if method == "ResetAfterOne":  # the upstream connection lives on: so do its other streams
        assert unary(b"during", timeout=WAIT) == b"during"
    fake.grpc_calls.open_gate(method)
    with pytest.raises(grpc.RpcError) as caught:
        next(call)
    # RST_STREAM(INTERNAL_ERROR) from upstream is passed on as it is: INTERNAL, as without the proxy.
    # A dropped upstream connection also reaches the client as INTERNAL (the client's own
    # connection is fine); direct, it would see its socket close (UNAVAILABLE).
    assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert fake.grpc_calls.wait_for("fault", method) is not None
    assert unary(b"after", timeout=WAIT) == b"after"  # the client's connection carries on
    by_method = {r["api_method"].rpartition(".")[2]: r for r in wait_for_records(audit_path, 3 if method ==
                                                                               "ResetAfterOne" else 2)}
    failed = by_method[method]
    assert failed["status"] == 200 and "grpc_status" not in failed
    assert failed["error"] and failed["response_bytes"] == framed(b"one")
    assert by_method["Unary"]["grpc_status"] == 0
    assert_only_valid_tokens(fake, "grpc-faults")


def test_upstream_reset_gives_the_client_the_same_status_as_without_the_proxy(
        gproxy: RunningProxy, fake: FakeGoogle, channels: list[grpc.Channel]) -> None:
    token = [("authorization", f"Bearer {fake.issue_token()}")]

    def outcome(channel: grpc.Channel, gate: str, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
        call = channel.unary_stream(FAULTS + "ResetAfterOne")(b"m", metadata=[("x-gate", gate), *metadata],
                                                               timeout=WAIT)
        assert next(call) == b"m"
        fake.grpc_calls.open_gate(gate)
        with pytest.raises(grpc.RpcError) as caught:
            next(call)
        return caught.value.code()

    without = outcome(direct(fake, channels, fake.grpc_faults_addr, "faults.googleapis.com"), "direct", token)
    through = outcome(via_proxy(gproxy, channels, host="faults.googleapis.com"), "proxied", [])
    assert through == without == grpc.StatusCode.INTERNAL


def test_upstream_gone_before_answering_is_unavailable_as_without_the_proxy(
        gproxy: RunningProxy, fake: FakeGoogle, channels: list[grpc.Channel], audit_path: Path) -> None:
    token = [("authorization", f"Bearer {fake.issue_token()}")]
    codes = []
    for channel, metadata in ((direct(fake, channels, fake.grpc_faults_addr, "faults.googleapis.com"), token),
                              (via_proxy(gproxy, channels, host="faults.googleapis.com"), [])):
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(FAULTS + "CloseBeforeHeaders")(b"x", metadata=metadata, timeout=WAIT)
        codes.append(caught.value.code())
    assert codes == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]  # retryable, both ways
    [record] = wait_for_records(audit_path, 1)
    assert record["api_method"] == "fakegoogle.testing.v1.Faults.CloseBeforeHeaders" and record["error"]


class RawH2:
    """An HTTP/2 client frame by frame (``h2``), through the proxy: CONNECT, TLS, then anything."""

    def __init__(self, pp: RunningProxy, host: str = PUBSUB, address: tuple[str, int] | None = None,
                 ca: Path | None = None) -> None:
        self.host = host
        sock = socket.create_connection(address or (pp.host, pp.port), timeout=WAIT)
        if address is None:
            sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(1)
                assert chunk, "the proxy closed the connection during CONNECT"
                head += chunk
            assert head.startswith(b"HTTP/1.1 200"), head
        context = ssl.create_default_context(cafile=str(ca or pp.ca_cert))
        context.set_alpn_protocols(["h2"])
        self.sock = context.wrap_socket(sock, server_hostname=host)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.received = bytearray()  # every byte the client got, decrypted: for the token check
        self.streams: dict[int, dict[str, Any]] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def call(self, method: str, body: bytes, *, end: bool = True, metadata: dict[str, str] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(":method", "POST"), (":scheme", "https"), (":authority", self.host),
                                     (":path", method), ("content-type", "application/grpc"), ("te", "trailers"),
                                     *(metadata or {}).items()])
        self.conn.send_data(sid, body, end_stream=end)
        self.streams[sid] = {"headers": {}, "data": b"", "trailers": {}, "reset": None, "ended": False}
        self.flush()
        return sid

    def raw(self, data: bytes) -> None:
        """Bytes straight onto the connection, past the h2 state machine."""
        self.sock.sendall(data)

    def done(self, sid: int) -> bool:
        stream = self.streams[sid]
        return bool(stream["ended"] or stream["reset"] is not None or self.terminated)

    def wait(self, *sids: int) -> None:
        """Read until each stream ended or was reset (or the connection went)."""
        while not all(self.done(sid) for sid in sids):
            data = self.sock.recv(65536)
            if not data:
                return
            self.received += data
            for event in self.conn.receive_data(data):
                stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = event
                elif stream is None:
                    continue
                elif isinstance(event, h2.events.ResponseReceived):
                    stream["headers"] = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    stream["data"] += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.TrailersReceived):
                    stream["trailers"] = dict(event.headers)
                elif isinstance(event, h2.events.StreamEnded):
                    stream["ended"] = True
                elif isinstance(event, h2.events.StreamReset):
                    stream["reset"] = event.error_code
            self.flush()

    def grpc_status(self, sid: int) -> str | None:
        stream = self.streams[sid]
        return stream["trailers"].get("grpc-status") or stream["headers"].get("grpc-status")

    def close(self) -> None:
        self.sock.close()


def wire(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


# Not a gRPC message: a length prefix promising more than the stream carries, and a "compressed"
# message on a call that named no encoding.
TRUNCATED = b"\x00\x00\x00\x00\x10abc"
FALSELY_COMPRESSED = b"\x01\x00\x00\x00\x03abc"


def test_garbage_grpc_messages_get_the_upstreams_status(gproxy: RunningProxy, fake: FakeGoogle,
                                                        audit_path: Path) -> None:
    token = {"authorization": f"Bearer {fake.issue_token()}"}
    statuses = []
    for client, metadata in ((RawH2(gproxy, address=fake.pubsub_addr, ca=fake.google_ca_pem), token),
                             (RawH2(gproxy), {})):
        try:
            sids = [client.call(ECHO + "Unary", body, metadata=metadata) for body in (TRUNCATED, FALSELY_COMPRESSED)]
            ok = client.call(ECHO + "Unary", wire(b"fine"), metadata=metadata)  # same connection, after them
            client.wait(*sids, ok)
            statuses.append([client.grpc_status(sid) for sid in (*sids, ok)])
            assert client.streams[ok]["data"] == wire(b"fine")
        finally:
            client.close()
    direct_statuses, proxied_statuses = statuses
    assert proxied_statuses == direct_statuses
    assert proxied_statuses[:2] != ["0", "0"] and proxied_statuses[2] == "0"
    audited = [r["grpc_status"] for r in read_records(audit_path)]
    assert sorted(audited) == sorted(int(s or -1) for s in proxied_statuses)


def test_garbage_http2_frames_end_their_stream_or_connection_and_nothing_else(
        gproxy: RunningProxy, fake: FakeGoogle, channels: list[grpc.Channel], audit_path: Path) -> None:
    bystander = via_proxy(gproxy, channels).unary_unary(ECHO + "Unary")  # its own connection
    assert bystander(b"before", timeout=WAIT) == b"before"
    client = RawH2(gproxy)
    try:
        # A stream error: DATA after the client itself ended the stream. The proxy resets that
        # stream (STREAM_CLOSED), cancels it upstream, and the connection carries on.
        waiting = client.call(ECHO + "Wait", wire(b""))
        assert fake.grpc_calls.wait_for("started", "Wait") is not None
        client.raw(b"\x00\x00\x03\x00\x01" + waiting.to_bytes(4, "big") + b"abc")
        client.wait(waiting)
        assert client.streams[waiting]["reset"] == h2.errors.ErrorCodes.STREAM_CLOSED
        assert fake.grpc_calls.wait_for("ended", "Wait") == ("ended", "Wait", "cancelled")
        after = client.call(ECHO + "Unary", wire(b"still here"))
        client.wait(after)
        assert client.streams[after]["data"] == wire(b"still here") and client.grpc_status(after) == "0"
        # A connection error: a WINDOW_UPDATE frame of the wrong size. GOAWAY, and the stream still
        # open on that connection ends.
        open_stream = client.call(ECHO + "Bidi", wire(b"ping"), end=False)
        assert fake.grpc_calls.wait_for("message", "Bidi") is not None
        client.raw(b"\x00\x00\x00\x08\x00\x00\x00\x00\x00")
        client.wait(open_stream)
        assert client.terminated is not None and client.terminated.error_code != 0
        assert not any(token in client.received.decode("latin-1") for token in fake.issued_tokens)
    finally:
        client.close()
    assert bystander(b"after", timeout=WAIT) == b"after"  # other connections carry on
    found = wait_for_records(audit_path, 5)
    by_path: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        by_path.setdefault(record["path"].rpartition("/")[2], []).append(record)
    assert "STREAM_CLOSED" in by_path["Wait"][0]["error"]
    assert "protocol error" in by_path["Bidi"][0]["error"].lower()
    assert [r["grpc_status"] for r in by_path["Unary"]] == [0, 0, 0]


# -- a real client library under `run` -------------------------------------------------------------

PUBSUB_CLIENT = r"""
import json, os, sys, threading, time
import google.auth
from google.cloud import pubsub_v1

count, suffix = int(sys.argv[1]), sys.argv[2]
credentials, _ = google.auth.default()
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path("fake-project", "topic-" + suffix)
subscription = subscriber.subscription_path("fake-project", "sub-" + suffix)
publisher.create_topic(name=topic)
subscriber.create_subscription(name=subscription, topic=topic)
received, changed = {}, threading.Condition()

def callback(message):
    message.ack()  # queued before the receipt is known, so the shutdown below still sends it
    with changed:
        received[message.data.decode()] = time.time()
        changed.notify_all()

streaming_pull = subscriber.subscribe(subscription, callback=callback)
published = {}
for i in range(count):
    data = "message %d" % i
    published[data] = time.time()
    publisher.publish(topic, data.encode()).result(timeout=30)
    # The next message goes out only once the subscriber has this one: on a stream the proxy held
    # back, the first wait would time out.
    with changed:
        if not changed.wait_for(lambda: data in received, timeout=30):
            sys.exit("%s was published but not received within 30 s" % data)
streaming_pull.cancel()
streaming_pull.result(timeout=30)
subscriber.close()
print(json.dumps({"published": published, "received": received, "credentials": type(credentials).__module__,
                  "key_file": os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")}))
"""


def test_pubsub_client_under_run_receives_messages_as_they_are_published(fake: FakeGoogle, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    count = 5
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", PUBSUB_CLIENT, str(count), tmp_path.name],
                      "--audit-log", str(audit))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["credentials"] == "google.auth.compute_engine.credentials"  # the placeholder endpoint
    assert result["key_file"] is None
    published, received = result["published"], result["received"]
    assert sorted(received) == sorted(published) == [f"message {i}" for i in range(count)]
    for i in range(count):
        assert published[f"message {i}"] <= received[f"message {i}"]
        if i + 1 < count:
            assert received[f"message {i}"] <= published[f"message {i + 1}"]
    assert_only_valid_tokens(fake)
    assert fake.pubsub.published == count
    subscription = f"projects/fake-project/subscriptions/sub-{tmp_path.name}"
    assert fake.pubsub.acked(subscription) == count
    assert_no_token_in(audit, fake)
    found = read_records(audit)  # `run` has exited: every record is written
    by_method: dict[str, list[dict[str, Any]]] = {}
    for record in found:
        by_method.setdefault(record.get("api_method", "?"), []).append(record)
    assert len(by_method["google.pubsub.v1.Publisher.Publish"]) == count
    assert all(r["grpc_status"] == 0 and r["auth"] == "injected" for r in by_method["google.pubsub.v1.Publisher.Publish"])
    [stream] = by_method["google.pubsub.v1.Subscriber.StreamingPull"]
    # One record for the whole stream, covering every message that came over it.
    start = datetime.datetime.fromisoformat(stream["time"]).timestamp()  # ms, truncated
    assert start <= min(received.values())
    assert start + stream["duration_ms"] / 1000 >= max(received.values()) - 0.002
    assert stream["response_bytes"] > 0 and stream["service"] == "pubsub"
