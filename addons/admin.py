"""Admin HTTP endpoints for operators: /healthz, /readyz, /metrics (Prometheus text).

Served by a small asyncio server on mitmproxy's own event loop: nothing blocks it, and
/readyz asks the TokenSource for a token exactly as a request would (single-flight,
respecting backoff), so "ready" means a token is fresh or can be had right now — the ADC
token, and one with each credential the routes name (an impersonation IAM refuses makes the
proxy unready, with IAM's sentence as the reason, rather than 403 on every request). An ID
token whose audience is each request's host is minted per host and not tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from typing import Any, NamedTuple

from mitmproxy import ctx, exceptions
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from addons import options
from addons.audit_log import AuditLog
from addons.metrics import Metrics
from addons.routing import Routing
from addons.same_user import Gate, admit_stream, is_loopback_host
from addons.token_cache import Token, TokenError
from addons.token_source import TokenSource
from addons.token_sources import TokenSources

logger = logging.getLogger(__name__)

READY_WAIT = 5.0  # longest /readyz waits for a token fetch before answering 503
READ_TIMEOUT = 10.0
MAX_HEADER_LINES = 100


class AdminAddress(NamedTuple):
    host: str
    port: int


def parse_admin_listen(text: str) -> AdminAddress:
    """``HOST:PORT`` or ``[v6]:PORT``; port 0 picks a free one.

    Raises:
        ValueError: when the text is not an address.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9090)")
    return AdminAddress(host, int(port))


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


def _json(status: int, payload: dict[str, Any]) -> Response:
    return Response(status, "application/json", json.dumps(payload).encode() + b"\n")


class Admin:
    """The admin endpoints; they read the components they are given (alone with ``-s``: /readyz
    says token injection is not configured, /metrics is 404, and on loopback only this process's
    own uid may connect, ``allow_uid`` being the SameUser addon's option)."""

    def __init__(self, tokens: TokenSource | None = None, audit: AuditLog | None = None,
                 metrics: Metrics | None = None, gate: Gate | None = None,
                 sources: TokenSources | None = None, routing: Routing | None = None) -> None:
        self.tokens = tokens
        self.sources = sources  # with routing: the credentials routes name, tried by /readyz
        self.routing = routing
        self.audit = audit
        self.metrics = metrics
        self.gate = gate or Gate()  # the proxy port's own, from the composition root
        self._loopback = False
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    def load(self, loader: Any) -> None:
        options.declare(loader, "admin_listen")

    def configure(self, updated: set[str]) -> None:
        if "admin_listen" not in updated:
            return
        self._stop()
        if not ctx.options.admin_listen:
            return
        try:
            address = parse_admin_listen(ctx.options.admin_listen)
        except ValueError as e:
            raise exceptions.OptionsError(f"admin_listen: {e}") from e
        # Bind now so a taken port is a startup error, not a log line later.
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(64)
        except OSError as e:
            raise exceptions.OptionsError(
                f"cannot listen on {ctx.options.admin_listen} for the admin endpoints: {e.strerror or e}"
            ) from e
        sock.setblocking(False)
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self._loopback = is_loopback_host(self.address[0])
        if self._loopback:
            self.gate.prepare()
        with contextlib.suppress(RuntimeError):  # configured again while running: serve right away
            asyncio.get_running_loop().create_task(self._serve())

    async def running(self) -> None:
        await self._serve()

    async def _serve(self) -> None:
        if self._sock is None or self._server is not None:
            return
        self._server = await asyncio.start_server(self._handle, sock=self._sock)
        host, port = self.address or ("", 0)
        shown = f"[{host}]" if ":" in host else host
        logger.info("admin endpoints on http://%s:%d (/healthz, /readyz, /metrics)", shown, port)

    def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        self.address = None

    def done(self) -> None:
        self._stop()

    # -- HTTP ----------------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._loopback and not await admit_stream(self.gate, reader, writer, "admin endpoints"):
            return
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            for _ in range(MAX_HEADER_LINES):
                header = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
                if header in (b"\r\n", b"\n", b""):
                    break
            parts = line.decode("latin-1").split()
            if len(parts) != 3:
                return
            method, target = parts[0], parts[1]
            response = await self.route(method, target.partition("?")[0])
            head = (
                f"HTTP/1.1 {response.status} {_REASONS.get(response.status, '')}\r\n"
                f"Content-Type: {response.content_type}\r\n"
                f"Content-Length: {len(response.body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head if method == "HEAD" else head + response.body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "only GET and HEAD"})
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            return await self.readiness()
        if path == "/metrics":
            if self.metrics is None:
                return _json(404, {"error": "metrics are not collected"})
            return Response(200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry))
        return _json(404, {"error": "not found; try /healthz, /readyz or /metrics"})

    async def readiness(self) -> Response:
        """Ready when a token is fresh or obtainable now; 503 with the reason otherwise."""
        tokens = self.tokens
        if tokens is None or tokens.cache is None:
            return _json(503, {"status": "unavailable", "reason": "token injection is not configured"})
        audit = self.audit
        if audit is not None and audit.broken:
            return _json(503, {"status": "unavailable",
                               "reason": f"the audit log cannot be written ({audit.broken})"})
        try:
            minted = self._route_credentials()
        except TokenError as e:  # over the new-audience budget: not ready for those routes yet
            return _json(503, {"status": "unavailable", "reason": str(e)})
        # ADC first (its failure is the one to report), then each route's credential, all at once.
        asked = [("", _fetch(tokens)), *((f"route {name}: ", _fetch(source)) for name, source in minted)]
        done, _ = await asyncio.wait([fetch for _, fetch in asked], timeout=READY_WAIT)
        for what, fetch in asked:
            if fetch not in done:
                return _json(503, {"status": "unavailable",
                                   "reason": f"{what}no token yet: fetching one took longer than {READY_WAIT:g}s"})
            if isinstance(fetch.exception(), TokenError):
                return _json(503, {"status": "unavailable", "reason": f"{what}{fetch.exception()}"})
        token: Token = asked[0][1].result()
        payload: dict[str, Any] = {"status": "ready", "token_id": token.fingerprint}
        if token.expires_at is not None:
            payload["token_expires_in_s"] = int(token.expires_at - time.time())
        if minted:
            payload["routes"] = {name: fetch.result().fingerprint
                                 for (name, _), (_, fetch) in zip(minted, asked[1:], strict=True)}
        return _json(200, payload)

    def _route_credentials(self) -> list[tuple[str, TokenSource]]:
        """(route name, token source) for each credential the routes name that one token stands for."""
        if self.sources is None or self.routing is None:
            return []
        return [(m.route.name, self.sources.source_for(m.credential, m.host))
                for m in self.routing.policy.minted_credentials() if not m.per_host]


def _fetch(source: TokenSource) -> asyncio.Future[Token]:
    """The source's token, asked as a request would; its outcome is read even after a timeout."""
    fetch = asyncio.ensure_future(source.token())
    fetch.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fetch


# Loaded alone (-s): the admin endpoints see only themselves. The program wires them in
# addons/composition.py.
addons = [Admin()]
