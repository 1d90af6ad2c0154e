"""Vertex AI-style streams on the fake googleapis origin: server-sent events, a long poll, a WebSocket echo.

- ``POST /v1/projects/P/locations/L/publishers/google/models/M:streamGenerateContent?alt=sse``
  answers ``text/event-stream``: ``events`` events (default 5) ``interval_ms`` apart (default
  300). Each event carries its sequence number and the server's send time (``sent_at``, Unix
  seconds), so a client can tell whether it got an event before the next one was produced.
  ``reset_after=K`` aborts the connection after K events (an upstream that resets mid-stream);
  ``pad=N`` adds N bytes of text to each event.
- ``POST /upload/v1/projects/P/locations/L/ragCorpora/C/ragFiles:upload`` reads the body as it
  comes and answers when and how much of it arrived (``fake.chunks``: ``[bytes, unix time]``
  per read), so a client can tell whether its body streamed through.
- ``POST /v1/projects/P/locations/L/operations/OP:wait?timeout=20s`` is a long poll: it answers
  the operation, done, after ``timeout`` seconds (at most 600) or when the server stops.
- ``wss://…/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent`` checks the bearer
  token on the upgrade (401 without a valid one) and echoes every message. Text commands:
  ``close:CODE`` closes with CODE; ``send:N`` answers N bytes in one binary message.

Token checks for the HTTP endpoints happen in googleapis.py like every other API.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from .http import Receive, Request, Response, Scope, Send, google_error, host_name, json_response
from .records import RecordedRequest
from .state import SharedState
from .tokens import bearer_token

STREAM_GENERATE = re.compile(
    r"^/v1/projects/[^/]+/locations/[^/]+/publishers/google/models/(?P<model>[^/:]+):streamGenerateContent$")
RAG_UPLOAD = re.compile(r"^/upload/v1/projects/[^/]+/locations/[^/]+/ragCorpora/(?P<corpus>[^/:]+)/ragFiles:upload$")
OPERATION_WAIT = re.compile(r"^/v1/projects/[^/]+/locations/[^/]+/operations/(?P<op>[^/:]+):wait$")
WEBSOCKET_PATH = "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"
DEFAULT_EVENTS = 5
DEFAULT_INTERVAL_MS = 300
MAX_EVENTS = 100_000
MAX_WAIT_SECONDS = 600.0
_POLL = 0.05  # how often a long poll looks at the stopping flag


class UpstreamReset(ConnectionResetError):
    """Raised mid-body on purpose: hypercorn then drops the connection (HTTP/1) or the stream (HTTP/2)."""


def is_aiplatform(host: str) -> bool:
    """``aiplatform.googleapis.com`` and its regional names (``us-central1-aiplatform…``)."""
    name = host.removesuffix(".googleapis.com")
    return name == "aiplatform" or name.endswith("-aiplatform")


async def aiplatform(request: Request, state: SharedState) -> Response | None:
    """The Vertex AI routes this fake knows; None for any other path (404 upstream of here)."""
    if request.method == "POST" and (m := STREAM_GENERATE.match(request.raw_path)):
        await request.drain()
        if request.query.get("alt") != "sse":
            return google_error(400, "This fake streams only with alt=sse.", "invalid")
        return stream_generate_content(m["model"], request.query)
    if request.method == "POST" and RAG_UPLOAD.match(request.raw_path):
        chunks = [[len(chunk), time.time()] async for chunk in request.stream()]
        return json_response(200, {"ragFile": {"name": request.raw_path.removeprefix("/upload/v1/")},
                                   "fake": {"bytes": request.body_bytes, "chunks": chunks}})
    if request.method == "POST" and (m := OPERATION_WAIT.match(request.raw_path)):
        await request.drain()
        return await operation_wait(request.raw_path.removesuffix(":wait"), request.query, state.stopping,
                                    request.disconnected())
    return None


def _int(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    try:
        return min(high, max(low, int(query.get(name, default))))
    except ValueError:
        return default


def stream_generate_content(model: str, query: dict[str, str]) -> Response:
    count = _int(query, "events", DEFAULT_EVENTS, 1, MAX_EVENTS)
    interval = _int(query, "interval_ms", DEFAULT_INTERVAL_MS, 0, 60_000) / 1000
    reset_after = _int(query, "reset_after", 0, 0, MAX_EVENTS)
    pad = "x" * _int(query, "pad", 0, 0, 1 << 20)

    async def events() -> AsyncIterator[bytes]:
        for seq in range(count):
            if seq:
                await asyncio.sleep(interval)  # the model "thinking": the server's own pacing
            if reset_after and seq == reset_after:
                raise UpstreamReset(f"fakegoogle: reset after {reset_after} events, as asked")
            chunk = {
                "candidates": [{"content": {"role": "model", "parts": [{"text": f"part {seq}{pad}"}]},
                                "index": 0}],
                "modelVersion": model,
                "fake": {"seq": seq, "last": seq == count - 1, "sent_at": time.time()},
            }
            yield b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\r\n\r\n"

    return Response(200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")], events())


def parse_duration(text: str) -> float | None:
    """Google's JSON duration ("20s", "1.5s") in seconds; None if it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)s", text.strip())
    return float(m[1]) if m else None


async def operation_wait(name: str, query: dict[str, str], stopping: threading.Event,
                         disconnected: Coroutine[Any, Any, None] | None = None) -> Response:
    """Answer after ``timeout``; sooner when the fake stops or the client goes (``disconnected``):
    a request the client gave up on is then recorded at once, not long after the test ended."""
    gone = asyncio.ensure_future(disconnected) if disconnected is not None else None
    try:
        seconds = parse_duration(query.get("timeout", "0s"))
        if seconds is None:
            return google_error(400, "timeout must be a duration such as 20s.", "invalid")
        start = time.monotonic()
        deadline = start + min(seconds, MAX_WAIT_SECONDS)
        while time.monotonic() < deadline and not stopping.is_set() and not (gone and gone.done()):
            await asyncio.sleep(min(_POLL, max(0.0, deadline - time.monotonic())))
        waited = round(time.monotonic() - start, 3)
    finally:
        if gone is not None:
            gone.cancel()
    return json_response(200, {"name": name.lstrip("/").removeprefix("v1/"), "done": True,
                               "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
                               "fake": {"waited_s": waited}})


# -- WebSocket ---------------------------------------------------------------------------------------

def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def websocket_echo(scope: Scope, receive: Receive, send: Send, state: SharedState) -> None:
    """One WebSocket: check the token on the upgrade, then echo until either side closes."""
    headers = _headers(scope)
    host = host_name(headers.get("host", ""))
    path = scope.get("path", "")
    token = bearer_token(headers.get("authorization"))
    valid = token is not None and state.tokens.is_valid(token)
    state.log.add(RecordedRequest(
        host=host, method="GET", path=path, authorization=headers.get("authorization"), token_valid=valid,
        headers=headers, body_bytes=0, http_version=scope.get("http_version", "1.1"), server="googleapis"))
    if (await receive())["type"] != "websocket.connect":
        return
    refusal = None
    if not valid:
        refusal = (401, _error(401, "Request had invalid authentication credentials.", "UNAUTHENTICATED"))
    elif not (is_aiplatform(host) and path == WEBSOCKET_PATH):
        refusal = (404, _error(404, f"Not Found: {path}", "NOT_FOUND"))
    if refusal is not None:
        body = json.dumps(refusal[1]).encode()
        await send({"type": "websocket.http.response.start", "status": refusal[0],
                    "headers": [(b"content-type", b"application/json; charset=UTF-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text: str | None = message.get("text")
        if text is not None and text.startswith("close:"):
            await send({"type": "websocket.close", "code": int(text.removeprefix("close:"))})
            return
        if text is not None and text.startswith("send:"):
            await send({"type": "websocket.send", "bytes": b"z" * int(text.removeprefix("send:"))})
        elif text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


def _error(code: int, message: str, status: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}
