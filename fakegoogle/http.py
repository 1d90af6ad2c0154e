"""Minimal ASGI request/response plumbing shared by all fake servers.

Handlers take a :class:`Request` and return a :class:`Response`; keeping them
free of ASGI details makes routing and handler logic easy to test and read.
Response bodies may be async iterators so large payloads stream with flat memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Body = bytes | AsyncIterator[bytes]


@dataclass
class Request:
    """One HTTP request; the body is read lazily so uploads can stream."""

    method: str
    raw_path: str  # still percent-encoded, without query
    query_string: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    host: str  # lower-case, port stripped
    http_version: str
    receive: Receive
    body_bytes: int = 0
    _body_done: bool = field(default=False, repr=False)

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Request:
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        raw_path = scope.get("raw_path") or scope["path"].encode()
        raw_path_str = raw_path.decode("latin-1").split("?", 1)[0]
        qs = scope.get("query_string", b"").decode("latin-1")
        return cls(
            method=scope["method"].upper(),
            raw_path=raw_path_str,
            query_string=qs,
            query=dict(parse_qsl(qs, keep_blank_values=True)),
            headers=headers,
            host=host_name(headers.get("host", "")),
            http_version=scope.get("http_version", "1.1"),
            receive=receive,
        )

    @property
    def full_path(self) -> str:
        """Path plus query, as the client sent it."""
        return f"{self.raw_path}?{self.query_string}" if self.query_string else self.raw_path

    @property
    def segments(self) -> list[str]:
        """Decoded path segments; decoding per segment keeps %2F inside names."""
        return [unquote(s) for s in self.raw_path.split("/")[1:]]

    async def stream(self) -> AsyncIterator[bytes]:
        """Yield request body chunks as they arrive (only once)."""
        while not self._body_done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self._body_done = True
                raise ConnectionError("client disconnected")
            chunk = message.get("body", b"")
            self.body_bytes += len(chunk)
            if not message.get("more_body", False):
                self._body_done = True
            if chunk:
                yield chunk

    async def body(self) -> bytes:
        """Read the whole body into memory (small payloads only)."""
        parts = [chunk async for chunk in self.stream()]
        return b"".join(parts)

    async def drain(self) -> None:
        """Discard any unread body so keep-alive connections stay usable."""
        async for _ in self.stream():
            pass

    async def disconnected(self) -> None:
        """Return once the client has gone (call after the body is read): a long poll ends then,
        as a server would, instead of answering nobody later."""
        await self.drain()
        while (await self.receive())["type"] != "http.disconnect":
            pass


@dataclass
class Response:
    """Status, headers and a bytes or streaming body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: Body = b""


def host_name(host_header: str) -> str:
    """Lower-case host without port ("Storage.GoogleApis.com:443" -> "storage.googleapis.com")."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if ":" in host else host


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> Response:
    """Serialize ``payload`` as compact JSON."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    hdrs = [("content-type", "application/json; charset=UTF-8"), ("content-length", str(len(body)))]
    return Response(status, hdrs + (headers or []), body)


def text_response(
    status: int,
    text: str,
    content_type: str = "text/plain; charset=utf-8",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    body = text.encode()
    hdrs = [("content-type", content_type), ("content-length", str(len(body)))]
    return Response(status, hdrs + (headers or []), body)


def google_error(code: int, message: str, reason: str = "", status: str = "") -> Response:
    """An error body in the shape Google JSON APIs use."""
    reason = reason or {
        400: "invalid",
        401: "required",
        403: "forbidden",
        404: "notFound",
        409: "conflict",
        412: "conditionNotMet",
    }.get(code, "backendError")
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
    }
    if status:
        error["status"] = status
    return json_response(code, {"error": error})


async def send_response(send: Send, response: Response, head_only: bool = False) -> None:
    """Write ``response`` to the ASGI ``send`` channel, streaming iterator bodies."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
        }
    )
    body = response.body
    if head_only:
        if not isinstance(body, bytes):
            await body.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b""})
    elif isinstance(body, bytes):
        await send({"type": "http.response.body", "body": body})
    else:
        try:
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        finally:
            await body.aclose()  # type: ignore[attr-defined]
        await send({"type": "http.response.body", "body": b""})


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge ASGI lifespan events (hypercorn sends them)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class App:
    """ASGI plumbing the fake servers share: lifespan, then one Response per HTTP request.

    ``drain_body`` reads the whole request body before ``respond`` (small control requests);
    the googleapis app leaves it to its routes so uploads stream.
    """

    drain_body = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request.from_scope(scope, receive)
        try:
            if self.drain_body:
                await request.drain()
            response = await self.respond(request)
        except ConnectionError:
            return  # the client went away mid-body
        except Exception:  # noqa: BLE001 - a bug in a fake route must answer, not hang the client
            response = self.internal_error(request)
        await send_response(send, response, head_only=request.method == "HEAD")

    async def respond(self, request: Request) -> Response:
        raise NotImplementedError

    def internal_error(self, request: Request) -> Response:
        logging.getLogger(__name__).exception("fakegoogle handler failed for %s %s",
                                              request.method, request.full_path)
        return json_response(500, {"error": {"code": 500, "message": "Internal error in fakegoogle."}})
