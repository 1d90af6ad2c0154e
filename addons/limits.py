"""Connection limits mitmproxy lacks: a connection cap, request-head size and time limits, upstream timeouts.

mitmproxy already closes connections idle for ``tcp_timeout`` seconds and streams bodies above
``stream_large_bodies``; it does not cap how many clients may connect, how large or how slowly a
request head may arrive (an HTTP/1 head is buffered until its blank line: unbounded), or how long an
upstream may take to accept a connection or to answer. This addon adds those, with one sweeper task
for all connections (no per-connection timers).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mitmproxy import connection, ctx, http, tls
from mitmproxy.net.http import http1 as http1_net
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from addons.errors import error_body, error_response

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_HEADER_SIZE = 64 * 1024
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 300.0
SWEEP_INTERVAL = 1.0


@dataclass(eq=False)
class ConnState:
    """What one client connection is doing, as far as the limits care."""

    opened_at: float
    handler: Any  # mitmproxy's connection handler (transports, tasks)
    waiting_since: float | None  # waiting for a request head since; None: busy or a tunnel
    first_byte_at: float | None = None
    served: int = 0  # requests whose heads arrived
    flows: set[str] = field(default_factory=set)  # ids of requests in progress
    tunnel: bool = False  # an untouched CONNECT tunnel: only the idle timeout applies
    h2: bool = False
    aborted: str | None = None

    @property
    def busy(self) -> bool:
        return bool(self.flows) or self.tunnel

    def head_started(self) -> float | None:
        """When the clock for the current request head started, or None if it is not running."""
        if self.waiting_since is None or self.tunnel:
            return None
        if self.served == 0:
            return self.waiting_since  # a new connection must send its first head promptly
        if self.h2:
            return None  # idle h2 connections carry pings and settings; the idle timeout covers them
        return self.first_byte_at  # keep-alive: idling is fine, dribbling a head is not


class _CountingReader:
    """Wraps a client connection's reader to note when a request head starts arriving.

    It does not measure head size: raw reads mix TLS records and request bodies that arrive
    before mitmproxy has parsed the head. Head size is capped on the parsed buffer instead
    (see ``_patch_http1``).
    """

    def __init__(self, inner: Any, state: ConnState, limits: Limits) -> None:
        self._inner = inner
        self._state = state
        self._limits = limits

    async def read(self, n: int = -1) -> bytes:
        data = await self._inner.read(n)
        state = self._state
        if data and state.waiting_since is not None and not state.tunnel and state.first_byte_at is None:
            state.first_byte_at = time.monotonic()
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class Limits:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.conns: dict[connection.Client, ConnState] = {}
        self.max_connections = DEFAULT_MAX_CONNECTIONS
        self.max_header_size = DEFAULT_MAX_HEADER_SIZE
        self.header_timeout = DEFAULT_HEADER_TIMEOUT
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self.read_timeout = DEFAULT_READ_TIMEOUT
        self.refused = 0
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._read_timers: dict[str, asyncio.TimerHandle] = {}
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}

    def load(self, loader: Any) -> None:
        loader.add_option("limits_max_connections", int, DEFAULT_MAX_CONNECTIONS,
                          "Most client connections open at once; more are closed at once. 0: no cap.")
        loader.add_option("limits_max_header_size", int, DEFAULT_MAX_HEADER_SIZE,
                          "Largest HTTP/1 request head in bytes; larger gets 431 and the connection closes.")
        loader.add_option("limits_header_timeout", float, DEFAULT_HEADER_TIMEOUT,
                          "Seconds a request head may take to arrive (from the connection's start, or its "
                          "first byte on a kept-alive connection); slower gets 408. 0: off.")
        loader.add_option("limits_connect_timeout", float, DEFAULT_CONNECT_TIMEOUT,
                          "Seconds to wait for an upstream TCP connection. 0: the OS default.")
        loader.add_option("limits_read_timeout", float, DEFAULT_READ_TIMEOUT,
                          "Seconds to wait for an upstream's response head once the request was sent. 0: off.")

    def configure(self, updated: set[str]) -> None:
        _patch_http1()
        o = ctx.options
        self.max_connections = o.limits_max_connections
        self.max_header_size = o.limits_max_header_size
        _HEAD_LIMIT[0] = self.max_header_size
        self.header_timeout = o.limits_header_timeout
        self.connect_timeout = o.limits_connect_timeout
        self.read_timeout = o.limits_read_timeout

    def running(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def done(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- connections ---------------------------------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if self.max_connections and len(self.conns) >= self.max_connections:
            self.refused += 1
            if self.refused == 1 or self.refused % 100 == 0:
                logger.warning("refused a connection from %s: %d connections open (limit %d; %d refused so far)",
                               client.peername[0] if client.peername else "?", len(self.conns),
                               self.max_connections, self.refused)
            client.error = "too many connections"
            return
        handler = _handler_for(client)
        state = ConnState(opened_at=self._clock(), handler=handler, waiting_since=self._clock())
        self.conns[client] = state
        if handler is not None:
            io = handler.transports.get(client)
            if io is not None and io.reader is not None:
                io.reader = _CountingReader(io.reader, state, self)

    def client_disconnected(self, client: connection.Client) -> None:
        _TIMED_OUT.pop(client.id, None)
        state = self.conns.pop(client, None)
        if state is not None:
            for flow_id in state.flows:
                self._cancel_read_timer(flow_id)

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        state = self.conns.get(nextlayer.context.client)
        if state is not None and isinstance(nextlayer.layer, layers.TCPLayer):
            state.tunnel = True  # bytes we do not look at: only the idle timeout applies

    def tls_established_client(self, data: tls.TlsData) -> None:
        state = self.conns.get(data.context.client)
        if state is not None:
            state.h2 = data.context.client.alpn == b"h2"

    # -- requests ------------------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        state = self.conns.get(flow.client_conn)
        if state is not None:
            state.served += 1
            self._restart(state)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self.conns.get(flow.client_conn)
        if state is None:
            return
        state.served += 1
        state.h2 = state.h2 or flow.request.http_version == "HTTP/2.0"
        state.flows.add(flow.id)
        state.waiting_since = None
        state.first_byte_at = None

    def request(self, flow: http.HTTPFlow) -> None:
        # The request is complete and about to go upstream: the read timeout starts.
        if self.read_timeout > 0 and flow.response is None and not flow.request.stream and flow.live:
            self._read_timers[flow.id] = asyncio.get_running_loop().call_later(
                self.read_timeout, self._read_timed_out, flow)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        self._cancel_read_timer(flow.id)

    def response(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finished(flow)

    def _finished(self, flow: http.HTTPFlow) -> None:
        self._cancel_read_timer(flow.id)
        state = self.conns.get(flow.client_conn)
        if state is not None and flow.id in state.flows:
            state.flows.discard(flow.id)
            if not state.flows:
                self._restart(state)

    def _restart(self, state: ConnState) -> None:
        state.waiting_since = self._clock()
        state.first_byte_at = None

    # -- upstream timeouts -----------------------------------------------------------------------------

    async def server_connect(self, data: Any) -> None:
        # This hook runs inside the task that is about to connect: cancelling that task is the
        # only way to bound asyncio.open_connection, which mitmproxy calls without a timeout.
        if self.connect_timeout <= 0 or data.server.error:
            return
        task = asyncio.current_task()
        if task is None:
            return
        address = data.server.address
        seconds = self.connect_timeout

        def expire() -> None:
            if data.server.timestamp_tcp_setup is None and data.server.error is None and not task.done():
                host = address[0] if address else "upstream"
                task.cancel(f"gcp-auth-proxy: connecting to {host} timed out after {seconds:g} s")

        self._disarm(data.server)
        self._connect_timers[data.server.id] = asyncio.get_running_loop().call_later(seconds, expire)

    def server_connected(self, data: Any) -> None:
        self._disarm(data.server)

    def server_connect_error(self, data: Any) -> None:
        self._disarm(data.server)

    def _disarm(self, server: connection.Server) -> None:
        handle = self._connect_timers.pop(server.id, None)
        if handle is not None:
            handle.cancel()

    def _read_timed_out(self, flow: http.HTTPFlow) -> None:
        self._read_timers.pop(flow.id, None)
        if flow.response is not None or not flow.live:
            return
        handler = _handler_for(flow.client_conn)
        io = handler.transports.get(flow.server_conn) if handler is not None else None
        if io is None or io.handler is None:
            return
        host = flow.request.pretty_host
        logger.warning("%s did not answer within %g s: closing the upstream connection", host, self.read_timeout)
        message = f"gcp-auth-proxy: {host} timed out: no answer within {self.read_timeout:g} s"
        flow.metadata.setdefault("gauth", {})["error"] = message
        # mitmproxy reports a closed upstream as "server closed connection"; say what happened.
        _TIMED_OUT[flow.client_conn.id] = message
        io.handler.cancel(message)

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy's own CONNECT failure page is HTML with advice for mitmproxy users: replace it."""
        response = flow.response
        if response is None or response.status_code != 502:
            return
        text = response.get_text(strict=False) or ""
        reason = text.split(": ", 1)[1].split(" If you plan", 1)[0].strip() if ": " in text else text
        reason = reason.removeprefix("Connection killed: ")
        status = 504 if "timed out" in reason else 502
        flow.response = error_response(
            status, f"gcp-auth-proxy could not connect to {flow.request.pretty_host}: {reason}",
            "upstreamTimeout" if status == 504 else "upstreamUnreachable")

    def _cancel_read_timer(self, flow_id: str) -> None:
        handle = self._read_timers.pop(flow_id, None)
        if handle is not None:
            handle.cancel()

    # -- slow clients ----------------------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if self.header_timeout <= 0:
                continue
            now = self._clock()
            for state in list(self.conns.values()):
                started = state.head_started()
                if started is not None and now - started > self.header_timeout and not state.aborted:
                    self.abort(state, 408, "Request Timeout",
                               f"The request head did not arrive within {self.header_timeout:g} s.")
                    self._kill(state, "request head timeout")

    def abort(self, state: ConnState, status: int, phrase: str, message: str) -> None:
        """Tell a plain-HTTP/1 client why it is being cut off (nothing is readable inside TLS)."""
        state.aborted = message
        handler = state.handler
        if handler is None:
            return
        client = handler.client
        io = handler.transports.get(client)
        if io is None or io.writer is None or client.tls or state.h2:
            return
        body = error_body(status, message, "proxyLimit")
        head = (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json; charset=UTF-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
        try:
            io.writer.write(head + body)
        except (OSError, RuntimeError):
            pass

    def _kill(self, state: ConnState, reason: str) -> None:
        handler = state.handler
        io = handler.transports.get(handler.client) if handler is not None else None
        if io is not None and io.handler is not None:
            io.handler.cancel(reason)

    # -- for graceful shutdown ----------------------------------------------------------------------------

    def busy_connections(self) -> int:
        """Connections with a request in progress or an open tunnel."""
        return sum(1 for s in self.conns.values() if s.busy)


_TIMED_OUT: dict[str, str] = {}  # client connection id -> why its upstream was cut off
_HEAD_LIMIT = [DEFAULT_MAX_HEADER_SIZE]  # largest HTTP/1 request head, in bytes
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _patch_http1() -> None:
    """Three gaps in mitmproxy's HTTP/1 server, closed by wrapping its functions. Idempotent.

    - The request head is buffered until its blank line without any bound ("FIXME: protect
      against header size DoS" in mitmproxy's read_headers): cap it at ``_HEAD_LIMIT`` bytes
      with a 431. This counts parsed, decrypted head bytes only, never a body.
    - Error responses: JSON like ours instead of an HTML page.
    - An upstream timeout is a 504, not mitmproxy's catch-all 502.
    """
    if getattr(_http1, "_gauth_patched", False):
        return
    original_send = _http1.Http1Server.send
    original_read_headers = _http1.Http1Server.read_headers

    def read_headers(self: Any, event: Any) -> Any:
        if isinstance(event, events.DataReceived) and len(self.buf) > _HEAD_LIMIT[0]:
            received = bytes(self.buf)  # only while a head is being read: small
            end = _HEAD_END.search(received)
            if (end.end() if end else len(received)) > _HEAD_LIMIT[0]:
                yield commands.SendData(self.conn, _http1.make_error_response(
                    431, f"The request head exceeds {_HEAD_LIMIT[0]} bytes."))
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from original_read_headers(self, event)

    def send(self: Any, event: Any) -> Any:
        if isinstance(event, ResponseProtocolError):
            message = _TIMED_OUT.pop(self.context.client.id, None)
            if message is not None:
                event = ResponseProtocolError(event.stream_id, message, event.code)
        return original_send(self, event)

    def make_error_response(status_code: int, message: str = "") -> bytes:
        if status_code == 502 and "timed out" in message:
            status_code = 504
        body = error_body(status_code, message or "gcp-auth-proxy could not complete the request.", "proxyError")
        response = http.Response.make(status_code, body, {
            "content-type": "application/json; charset=UTF-8", "connection": "close", "cache-control": "no-store"})
        return http1_net.assemble_response(response)

    _http1.Http1Server.send = send  # type: ignore[method-assign]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]
    _http1.make_error_response = make_error_response
    _http1._gauth_patched = True  # type: ignore[attr-defined]


def _handler_for(client: connection.Client) -> Any:
    server = ctx.master.addons.get("proxyserver") if ctx.master else None
    return server.connections.get(client.id) if server is not None else None


addons = [Limits()]
