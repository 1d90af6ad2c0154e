"""Bodies go through chunk by chunk as they arrive; only a small request a 401 may need again is held.

mitmproxy holds a body until it is complete unless an addon sets ``message.stream`` at the header
phase (or the body is larger than ``stream_large_bodies``, the program's fallback, 64 KiB). For an
event stream, a long download or gRPC that means the client sees nothing until the end. The
decision, one place:

- every response body streams, whatever its size or framing (Content-Length, chunked, HTTP/2
  DATA frames, read until close), except a 401 that ``GoogleAuth`` keeps whole to replay the
  request with a fresh token (it marks the flow ``REPLAY_PENDING``);
- a request body streams too, except one this module holds (``should_hold_request``): a body of
  known length up to ``REPLAY_MAX_BODY`` (64 KiB) on a request that carries the proxy's token, so a
  401 can be replayed; never gRPC, never an ``Expect: 100-continue`` upload. A request without a
  body is not marked either: there is nothing to stream, and its 401 can be replayed;
- WebSocket messages are relayed one by one by mitmproxy itself; this keeps only the latest in
  the flow, so a long-lived socket does not grow memory message by message.

Runs after GoogleAuth (it needs to know whether the proxy's token went on the request) and before
the audit log and metrics, which count a streamed body chunk by chunk.
Load alone with ``mitmdump -s addons/streaming.py``.
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy import http

from addons.replay import REPLAY_MAX_BODY

HOLD_MAX = REPLAY_MAX_BODY
# Set in flow.metadata["gauth"] by GoogleAuth on a 401 it means to replay: keep that answer whole.
REPLAY_PENDING = "replay_pending"
# Methods that carry no body in practice: over HTTP/2 a request without Content-Length says
# nothing about its body, and for these we assume none (mitmproxy's 64 KiB fallback streams a
# surprise body anyway). Any other method without a length streams.
_BODILESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


def should_hold_request(method: str, headers: Mapping[str, str], *, http2: bool, replayable: bool) -> bool:
    """Whether a request body is held until complete instead of streamed (pure).

    Args:
        method: the request method.
        headers: the request headers; names are looked up in lower case (mitmproxy's
            ``Headers`` ignores case anyway).
        http2: the request arrived over HTTP/2 or HTTP/3, where a missing Content-Length does
            not mean "no body".
        replayable: the request carries the proxy's token, so a 401 could be replayed.

    Returns:
        True for a request without a body, and for a small body of known length that a replay
        may need; False (stream it) otherwise.
    """
    if headers.get("content-type", "").strip().lower().startswith("application/grpc"):
        return False  # a gRPC stream may never end: it must flow both ways
    if headers.get("expect", "").strip().lower() == "100-continue":
        return False  # the client waits to be told to send: a large upload, by its own account
    if "transfer-encoding" in headers:
        return False  # chunked: of unknown length until it ends
    length = headers.get("content-length")
    if length is None:
        return not http2 or method.upper() in _BODILESS_METHODS  # HTTP/1: no length, no body
    length = length.strip()
    if not (length.isascii() and length.isdigit()):
        return False  # mitmproxy refuses malformed framing before this; never hold on a guess
    size = int(length)
    return size == 0 or (replayable and size <= HOLD_MAX)


def should_stream_response(status_code: int, replay_pending: bool) -> bool:
    """Whether a response body streams (pure): always, but for a 401 kept for the replay and a 101
    (it has no body; the WebSocket that follows is relayed message by message)."""
    return status_code != 101 and not replay_pending


class Streaming:
    """Switches streaming on at the header phase, as decided above."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        request = flow.request
        if flow.response is not None or flow.error or not flow.live or request.stream:
            return  # answered already (a stream would make mitmproxy raise), or already streaming
        meta = flow.metadata.get("gauth", {})
        if not should_hold_request(request.method, request.headers,
                                   http2=request.http_version.startswith(("HTTP/2", "HTTP/3")),
                                   replayable=meta.get("auth") == "injected"):
            request.stream = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is None or response.stream or not flow.live:
            return
        meta = flow.metadata.get("gauth", {})
        if should_stream_response(response.status_code, bool(meta.get(REPLAY_PENDING))):
            response.stream = True

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        # mitmproxy appends every message to the flow; the relay and our counters need only the last.
        if flow.websocket is not None and len(flow.websocket.messages) > 1:
            del flow.websocket.messages[:-1]


addons = [Streaming()]
