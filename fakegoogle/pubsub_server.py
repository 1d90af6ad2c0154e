"""The fake's gRPC servers (grpcio, TLS): Pub/Sub on pubsub.googleapis.com, and a test service.

Every call is recorded like the HTTP fakes' requests (``RecordedRequest``, server ``pubsub`` or
``grpc-other``). On a Google name a call needs ``authorization: Bearer <token this fake issued>``
and is answered UNAUTHENTICATED otherwise, before any handler runs. The non-Google server
(``grpc.example.test``, the other origin's CA) wants no token and reports any it receives as a leak.

The test service ``fakegoogle.testing.v1.Echo`` carries raw bytes (no protobuf) and shows what
crossed the proxy: every ``x-echo-*`` request metadata (``-bin`` included) comes back as trailing
metadata, ``x-fail-code``/``x-fail-message-bin`` make a call end with that status, and
``FakeGoogle.grpc_calls`` (a :class:`CallEvents`) records when a call started, with what deadline,
and how it ended.
"""

from __future__ import annotations

import base64
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from .pubsub import PubsubModel
from .pubsub import handlers as pubsub_handlers
from .records import RecordedRequest
from .state import SharedState
from .tokens import bearer_token

ECHO = "fakegoogle.testing.v1.Echo"
UNAUTHENTICATED_MESSAGE = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
    "other valid authentication credential."
)
GATE_TIMEOUT = 60.0  # a gate nobody opens must not hold a server thread for ever
STOP_GRACE = 0.5


class CallEvents:
    """What the test service saw, in order: ``(kind, method, detail)``; tests wait on conditions.

    Kinds: ``started`` (detail: the deadline the server got, in seconds, or None), ``ended``
    (detail: ``ok``, ``cancelled``, ``deadline``), ``message`` (detail: a message's bytes),
    ``fault`` (the fault server's). A call sent with ``x-gate: NAME`` parks midway until the test
    calls ``open_gate(NAME)``; ``clear()`` (each test's start, and stop) releases every parked call.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        # The newest only, so a benchmark's millions of calls keep the fake flat in memory.
        self._events: deque[tuple[str, str, Any]] = deque(maxlen=100_000)
        self._open: set[str] = set()  # gates the test opened
        self._released = 0  # bumped by clear(): every gate waited on before it counts as open

    def add(self, kind: str, method: str, detail: Any = None) -> None:
        with self._changed:
            self._events.append((kind, method, detail))
            self._changed.notify_all()

    def snapshot(self) -> list[tuple[str, str, Any]]:
        with self._changed:
            return list(self._events)

    def wait_for(self, kind: str, method: str, timeout: float = 10.0) -> tuple[str, str, Any] | None:
        """The first ``(kind, method, detail)`` event, waiting up to ``timeout`` s for it."""
        def found() -> tuple[str, str, Any] | None:
            return next((e for e in self._events if e[0] == kind and e[1] == method), None)

        with self._changed:
            return self._changed.wait_for(found, timeout)

    def open_gate(self, name: str) -> None:
        with self._changed:
            self._open.add(name)
            self._changed.notify_all()

    def wake(self) -> None:
        """Make waiters look again (a call they serve ended)."""
        with self._changed:
            self._changed.notify_all()

    def wait_gate(self, name: str, alive: Callable[[], bool] = lambda: True,
                  timeout: float = GATE_TIMEOUT) -> bool:
        """Block until the test opens gate ``name`` (True), or ``alive()`` turns false or the
        timeout passes (False). Whoever ends ``alive()`` must call :meth:`wake`."""
        with self._changed:
            era = self._released
            self._changed.wait_for(lambda: name in self._open or era != self._released or not alive(), timeout)
            return name in self._open or era != self._released

    def clear(self) -> None:
        with self._changed:
            self._events.clear()
            self._open.clear()
            self._released += 1  # release anything still parked on an old gate
            self._changed.notify_all()


# -- the test service ------------------------------------------------------------------------------

def _metadata(context: grpc.ServicerContext) -> dict[str, str | bytes]:
    return {k: v for k, v in context.invocation_metadata()}


def _echo_trailers(context: grpc.ServicerContext) -> None:
    context.set_trailing_metadata(tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo-")))


def _maybe_fail(context: grpc.ServicerContext) -> None:
    metadata = _metadata(context)
    code = metadata.get("x-fail-code")
    if isinstance(code, str):
        status = next(s for s in grpc.StatusCode if s.value[0] == int(code))
        message = metadata.get("x-fail-message-bin", b"")  # UTF-8: metadata text must be ASCII
        context.abort(status, message.decode() if isinstance(message, bytes) else "")


def _ended(context: grpc.ServicerContext) -> str:
    remaining = context.time_remaining()
    return "deadline" if remaining is not None and remaining <= 0 else "cancelled"


def _watch(events: CallEvents, method: str, context: grpc.ServicerContext) -> Callable[[], None]:
    """Record the call's start (with the deadline the server got) and, when it terminates, how.

    Returns the function the handler calls once it has done its work: the call then ended ``ok``
    (whatever status it carries); otherwise its end is ``cancelled`` or ``deadline``.
    """
    remaining = context.time_remaining()
    # grpcio reports a call without a deadline as having practically for ever left.
    events.add("started", method, remaining if remaining is not None and remaining < 1e6 else None)
    finished = threading.Event()
    context.add_callback(lambda: events.add("ended", method, "ok" if finished.is_set() else _ended(context)))
    return finished.set


def echo_handler(events: CallEvents) -> grpc.GenericRpcHandler:
    """``fakegoogle.testing.v1.Echo``: Unary, Wait, ServerStream, ClientStream, Bidi (raw bytes)."""

    def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
        finished = _watch(events, "Unary", context)
        _echo_trailers(context)
        finished()
        _maybe_fail(context)
        return request

    def wait(request: bytes, context: grpc.ServicerContext) -> bytes:
        """Never answers: ends when the client cancels, the deadline passes or the server stops."""
        _watch(events, "Wait", context)
        terminated = threading.Event()
        context.add_callback(terminated.set)
        terminated.wait(GATE_TIMEOUT)
        return b""

    def server_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """``request`` is a count: that many messages. With ``x-gate: NAME`` it pauses after the
        first until the test opens the gate (proof that the first message was not held back)."""
        finished = _watch(events, "ServerStream", context)
        _echo_trailers(context)
        gate = _metadata(context).get("x-gate")
        for i in range(int(request or b"0")):
            yield b"message %d" % i
            if i == 0 and isinstance(gate, str):
                context.add_callback(events.wake)  # a cancelled call stops waiting at once
                if not events.wait_gate(gate, context.is_active):
                    context.abort(grpc.StatusCode.ABORTED, "the gate was not opened")
        finished()
        _maybe_fail(context)

    def client_stream(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        finished = _watch(events, "ClientStream", context)
        _echo_trailers(context)
        count = total = 0
        for message in requests:
            count += 1
            total += len(message)
        if context.is_active():  # the client half-closed; a cancel also ends the requests
            finished()
        _maybe_fail(context)
        return b"%d messages, %d bytes" % (count, total)

    def bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        """Echoes each message as soon as it arrives (a ping-pong client proves both directions
        stream). With ``x-hold`` it echoes the first, then reads no more and waits for the call to
        end: only a reset (cancel) or the deadline can end it, never a half-close."""
        finished = _watch(events, "Bidi", context)
        _echo_trailers(context)
        hold = "x-hold" in _metadata(context)
        for message in requests:
            events.add("message", "Bidi", message)
            yield message
            if hold:
                terminated = threading.Event()
                context.add_callback(terminated.set)
                terminated.wait(GATE_TIMEOUT)
                return
        # grpcio ends the requests the same way for a half-close and, at times, for a cancel.
        if context.is_active():
            finished()
        _maybe_fail(context)

    return grpc.method_handlers_generic_handler(ECHO, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Wait": grpc.unary_unary_rpc_method_handler(wait),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


# -- authentication and recording ------------------------------------------------------------------

def _abort_with(code: grpc.StatusCode, message: str, like: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``like`` that ends the call at once with ``code``."""
    def abort(_: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if like.request_streaming and like.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if like.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if like.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


def _header_text(value: str | bytes) -> str:
    """A metadata value as text: ``-bin`` values (bytes) base64, as they travel."""
    return base64.b64encode(value).decode() if isinstance(value, bytes) else value


class _Gatekeeper(grpc.ServerInterceptor):
    """Records every call; on a Google name, refuses calls without a valid token."""

    def __init__(self, state: SharedState, host: str, label: str, require_token: bool) -> None:
        self.state = state
        self.host = host
        self.label = label
        self.require_token = require_token

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        metadata = [(k, v) for k, v in details.invocation_metadata]  # type: ignore[attr-defined]
        headers = {k: _header_text(v) for k, v in metadata}
        authorization = headers.get("authorization")
        token = bearer_token(authorization)
        token_valid = token is not None and self.state.tokens.is_valid(token)
        if not self.require_token:
            for name, value in [("path", details.method), *headers.items()]:  # type: ignore[attr-defined]
                if self.state.tokens.found_in(value):
                    self.state.leaks.append(name)
        self.state.log.add(RecordedRequest(
            host=self.host, method="POST", path=details.method,  # type: ignore[attr-defined]
            authorization=authorization, token_valid=token_valid, headers=headers, body_bytes=0,
            http_version="HTTP/2", server=self.label,
        ))
        handler = continuation(details)
        if handler is not None and self.require_token and not token_valid:
            return _abort_with(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE, handler)
        return handler


class GrpcSite:
    """One grpcio server on 127.0.0.1 (ephemeral port), TLS with the given certificate."""

    def __init__(self, handlers: list[grpc.GenericRpcHandler], gatekeeper: _Gatekeeper,
                 cert_pem: Path, key_pem: Path) -> None:
        self._handlers = handlers
        self._gatekeeper = gatekeeper
        self._credentials = grpc.ssl_server_credentials([(key_pem.read_bytes(), cert_pem.read_bytes())])
        self._server: grpc.Server | None = None
        self.addr: tuple[str, int] = ("127.0.0.1", 0)

    def start(self) -> tuple[str, int]:
        # Streaming calls hold a thread each for their whole life (grpcio's sync server).
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="fake-grpc"),
                             handlers=self._handlers, interceptors=[self._gatekeeper],
                             options=[("grpc.so_reuseport", 0)])
        port = server.add_secure_port("127.0.0.1:0", self._credentials)
        server.start()
        self._server = server
        self.addr = ("127.0.0.1", port)
        return self.addr

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(STOP_GRACE).wait(5 * STOP_GRACE + 5)
            self._server = None


def pubsub_site(state: SharedState, model: PubsubModel, events: CallEvents, cert_pem: Path,
                key_pem: Path) -> GrpcSite:
    """pubsub.googleapis.com: Pub/Sub and the test service, each call needing a valid token."""
    return GrpcSite([*pubsub_handlers(model), echo_handler(events)],
                    _Gatekeeper(state, "pubsub.googleapis.com", "pubsub", require_token=True), cert_pem, key_pem)


def other_grpc_site(state: SharedState, events: CallEvents, cert_pem: Path, key_pem: Path) -> GrpcSite:
    """grpc.example.test: the test service on a non-Google origin (its own CA, no token wanted)."""
    return GrpcSite([echo_handler(events)],
                    _Gatekeeper(state, "grpc.example.test", "grpc-other", require_token=False), cert_pem, key_pem)

