"""A raw HTTP/2 gRPC upstream that fails the way real ones do: a stream reset midway, a dropped connection.

grpcio's own server always ends a call with trailers; this one speaks HTTP/2 frame by frame (the
``h2`` library) so tests can see what the proxy does when an upstream misbehaves. Service
``fakegoogle.testing.v1.Faults`` (raw bytes, gRPC framing), on a Google name (a valid token needed):

* ``Unary``: echoes the request message, ``grpc-status: 0``.
* ``ResetAfterOne``: response headers and the request message once, then ``RST_STREAM``
  (INTERNAL_ERROR) on that stream only; the connection and its other streams carry on.
* ``CloseAfterOne``: the same, then the TCP connection is dropped without a GOAWAY.
* ``CloseBeforeHeaders``: the TCP connection is dropped before any answer.

With request metadata ``x-gate: NAME`` the failure waits until the test opens that gate of the
shared :class:`~fakegoogle.pubsub_server.CallEvents`, so it happens after the client has the
first message. Each failure is recorded there as ``("fault", METHOD, detail)``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from .pubsub_server import UNAUTHENTICATED_MESSAGE, CallEvents
from .records import RecordedRequest
from .state import SharedState
from .tokens import bearer_token

FAULTS = "fakegoogle.testing.v1.Faults"


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def first_message(body: bytes) -> bytes:
    if len(body) < 5:
        return b""
    return body[5:5 + int.from_bytes(body[1:5], "big")]


class FaultServer:
    """Listens on 127.0.0.1 (ephemeral port); one thread per connection, one per answered stream."""

    def __init__(self, state: SharedState, events: CallEvents, cert_pem: Path, key_pem: Path) -> None:
        self.state = state
        self.events = events
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._tls.load_cert_chain(str(cert_pem), str(key_pem))
        self._tls.set_alpn_protocols(["h2"])
        self._sock: socket.socket | None = None
        self._conns: set[_Connection] = set()
        self._lock = threading.Lock()
        self.addr: tuple[str, int] = ("127.0.0.1", 0)

    def start(self) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock = sock
        self.addr = sock.getsockname()[:2]
        threading.Thread(target=self._accept, name="fake-grpc-faults", daemon=True).start()
        return self.addr

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                raw, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            conn = _Connection(self, raw)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=conn.run, name="fake-grpc-faults-conn", daemon=True).start()

    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()


class _Connection:
    def __init__(self, server: FaultServer, raw: socket.socket) -> None:
        self.server = server
        self.raw = raw
        self.sock: ssl.SSLSocket | None = None
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.lock = threading.Lock()  # the h2 state machine and the socket's writes
        self.headers: dict[int, dict[str, str]] = {}
        self.bodies: dict[int, bytearray] = {}

    def run(self) -> None:
        try:
            self.raw.settimeout(10)
            self.sock = self.server._tls.wrap_socket(self.raw, server_side=True)
            self.sock.settimeout(None)
            self.send(lambda c: c.initiate_connection())
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                with self.lock:
                    events = self.h2.receive_data(data)
                for event in events:
                    self.handle(event)
                self.send(lambda c: None)
        except (OSError, ssl.SSLError, h2.exceptions.ProtocolError):
            return
        finally:
            self.close()
            self.server.forget(self)

    def handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self.headers[event.stream_id] = {str(k): str(v) for k, v in event.headers or []}
            self.bodies[event.stream_id] = bytearray()
        elif isinstance(event, h2.events.DataReceived):
            self.bodies.setdefault(event.stream_id, bytearray()).extend(event.data or b"")
            self.send(lambda c: c.acknowledge_received_data(event.flow_controlled_length, event.stream_id))
        elif isinstance(event, h2.events.StreamEnded):
            sid = event.stream_id
            args = (sid, self.headers.pop(sid, {}), bytes(self.bodies.pop(sid, b"")))
            threading.Thread(target=self.answer, args=args, name="fake-grpc-faults-stream", daemon=True).start()

    def send(self, change: object) -> None:
        with self.lock:
            change(self.h2)  # type: ignore[operator]
            data = self.h2.data_to_send()
            if data and self.sock is not None:
                self.sock.sendall(data)

    def answer(self, sid: int, headers: dict[str, str], body: bytes) -> None:
        path = headers.get(":path", "")
        state = self.server.state
        token = bearer_token(headers.get("authorization"))
        valid = token is not None and state.tokens.is_valid(token)
        state.log.add(RecordedRequest(
            host=headers.get(":authority", ""), method=headers.get(":method", ""), path=path,
            authorization=headers.get("authorization"), token_valid=valid,
            headers={k: v for k, v in headers.items() if not k.startswith(":")}, body_bytes=len(body),
            http_version="HTTP/2", server="grpc-faults",
        ))
        start = [(":status", "200"), ("content-type", "application/grpc")]
        try:
            if not valid:
                self.send(lambda c: c.send_headers(sid, [*start, ("grpc-status", "16"),
                                                         ("grpc-message", UNAUTHENTICATED_MESSAGE)], end_stream=True))
                return
            method = path.removeprefix(f"/{FAULTS}/")
            message = first_message(body)
            if method == "CloseBeforeHeaders":
                self.server.events.add("fault", method, "connection dropped")
                self.close()
            elif method == "Unary":
                self.send(lambda c: (c.send_headers(sid, start), c.send_data(sid, grpc_frame(message)),
                                     c.send_headers(sid, [("grpc-status", "0")], end_stream=True)))
            elif method in ("ResetAfterOne", "CloseAfterOne"):
                self.send(lambda c: (c.send_headers(sid, start), c.send_data(sid, grpc_frame(message))))
                gate = headers.get("x-gate")
                if gate and not self.server.events.wait_gate(gate):
                    return
                if method == "ResetAfterOne":
                    self.send(lambda c: c.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR))
                    self.server.events.add("fault", method, "RST_STREAM INTERNAL_ERROR")
                else:
                    self.server.events.add("fault", method, "connection dropped")
                    self.close()
            else:
                self.send(lambda c: c.send_headers(sid, [*start, ("grpc-status", "12"),
                                                         ("grpc-message", f"unknown method {path}")], end_stream=True))
        except h2.exceptions.StreamClosedError:
            return  # the client reset this stream meanwhile
        except (OSError, ssl.SSLError, h2.exceptions.H2Error):
            self.close()  # the client is gone

    def close(self) -> None:
        """Drop the TCP connection at once: no close_notify, no GOAWAY."""
        sock = self.sock or self.raw  # wrap_socket() took over the raw socket's descriptor
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
