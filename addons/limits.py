"""Connection limits mitmproxy lacks: a connection cap, request-head size and time limits, upstream timeouts.

mitmproxy already closes connections idle for ``tcp_timeout`` seconds and streams bodies above
``stream_large_bodies``; it does not cap how many clients may connect, how large or how slowly a
request head may arrive (an HTTP/1 head is buffered until its blank line: unbounded), or how long an
upstream may take to accept a connection or to answer. This addon adds those, with one sweeper task
for all connections (no per-connection timers).

The request-head size cap and JSON error pages (with 504 for an upstream that timed out) live in
mitmproxy's HTTP/1 layer, where no addon hook reaches: ``addons/http1_patch.py`` wraps it, and only
the program installs that (``proxy/embed.py``). ``mitmdump -s addons/limits.py`` alone therefore
gives the connection cap and the timeouts, but no head-size cap and mitmproxy's own HTML error pages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx, http, tls
from mitmproxy.proxy import layer, layers

from addons import http1_patch, options
from addons.errors import error_body, error_response

if TYPE_CHECKING:
    from addons.upstream_proxy import Carried

logger = logging.getLogger(__name__)

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
    (see ``addons/http1_patch.py``).
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
    def __init__(self, clock: Callable[[], float] = time.monotonic, proxyserver: Any = None,
                 carried: Mapping[connection.Server, Carried] | None = None) -> None:
        # mitmproxy's Proxyserver addon, whose connection handlers we wrap; the program passes it
        # (addons/composition.py); loaded alone with -s it is found when the proxy runs.
        self.proxyserver = proxyserver
        # --upstream-proxy: how a tunnelled connection is carried (UpstreamProxy.carried); it has
        # no transport of its own, the connection to the upstream proxy has.
        self.carried: Mapping[connection.Server, Carried] = carried if carried is not None else {}
        self.conns: dict[connection.Client, ConnState] = {}
        defaults = options.BY_NAME
        self.max_connections: int = defaults["max_connections"].default
        self.max_header_size: int = defaults["max_header_size"].default
        self.header_timeout: float = defaults["header_timeout"].default
        self.connect_timeout: float = defaults["connect_timeout"].default
        self.read_timeout: float = defaults["read_timeout"].default
        self.refused = 0
        self._clock = clock
        self._sweeper: asyncio.Task[None] | None = None
        self._read_timers: dict[str, asyncio.TimerHandle] = {}
        self._connect_timers: dict[str, asyncio.TimerHandle] = {}

    def load(self, loader: Any) -> None:
        options.declare(loader, "max_connections", "max_header_size", "header_timeout", "connect_timeout", "read_timeout")

    def configure(self, updated: set[str]) -> None:
        o = ctx.options
        self.max_connections = o.max_connections
        self.max_header_size = o.max_header_size  # applied by addons/http1_patch.py, per connection
        self.header_timeout = o.header_timeout
        self.connect_timeout = o.connect_timeout
        self.read_timeout = o.read_timeout

    def running(self) -> None:
        if self.proxyserver is None and ctx.master is not None:  # standalone (-s) only
            self.proxyserver = ctx.master.addons.get("proxyserver")
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
        handler = self._handler_for(client)
        state = ConnState(opened_at=self._clock(), handler=handler, waiting_since=self._clock())
        self.conns[client] = state
        if handler is not None:
            io = handler.transports.get(client)
            if io is not None and io.reader is not None:
                io.reader = _CountingReader(io.reader, state, self)

    def client_disconnected(self, client: connection.Client) -> None:
        http1_patch.forget(client)
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
        # The request is complete (a streamed one has just passed its last byte) and the answer's
        # head has not come yet: the read timeout starts.
        if self.read_timeout > 0 and flow.response is None and flow.live:
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
        handler = self._handler_for(flow.client_conn)
        carried = self.carried.get(flow.server_conn)
        server = carried.carrier if carried is not None else flow.server_conn
        io = handler.transports.get(server) if handler is not None else None
        if io is None or io.handler is None:
            return
        host = flow.request.pretty_host
        logger.warning("%s did not answer within %g s: closing the upstream connection", host, self.read_timeout)
        message = f"gcp-auth-proxy: {host} timed out: no answer within {self.read_timeout:g} s"
        flow.metadata.setdefault("gauth", {})["error"] = message
        # mitmproxy reports a closed upstream as "server closed connection"; say what happened.
        http1_patch.note_upstream_timeout(flow.client_conn, message)
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
            "upstreamTimeout" if status == 504 else "upstreamUnreachable", request=flow.request)

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

    def _handler_for(self, client: connection.Client) -> Any:
        server = self.proxyserver
        return server.connections.get(client.id) if server is not None else None

    def busy_connections(self) -> int:
        """Connections with a request in progress or an open tunnel."""
        return sum(1 for s in self.conns.values() if s.busy)


addons = [Limits()]
