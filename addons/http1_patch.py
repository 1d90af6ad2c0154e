"""The one place we change mitmproxy's code: three wraps in its HTTP/1 server layer and one in its
HTTP/2 server layer, mitmproxy 12.x only.

mitmproxy has no hook where these belong, so ``install()`` wraps private functions of
``mitmproxy.proxy.layers.http._http1`` and ``_http2`` (read as of mitmproxy 12.3):

- ``Http1Server.read_headers`` buffers a request head until its blank line without any bound
  (its own "FIXME: protect against header size DoS"): capped at the ``max_header_size``
  option with a 431 and a close. Only parsed, decrypted head bytes count, never a body.
- ``make_error_response``: JSON like ours instead of mitmproxy's HTML page, and an upstream that
  timed out is a 504, not mitmproxy's catch-all 502.
- ``Http1Server.send``: the error page for an upstream that Limits cut off says why (a read
  timeout), not "server closed connection".
- ``Http2Server._handle_event``: an HTTP/2 stream that fails before its response head gets the
  same JSON error as HTTP/1 (504 for an upstream that timed out, with the same message) instead
  of mitmproxy's HTML 502. Once the head went out, mitmproxy's stream reset stays.

The program calls ``install()`` once, before its master starts (``proxy/embed.py``); an addon
never does, so ``mitmdump -s addons/limits.py`` leaves mitmproxy as it is.

State is per master, nothing global differs between masters:

- the head limit is read per connection from the layer's own context
  (``self.context.options``: the options of the master that accepted it); without the option
  (mitmdump without Limits) there is no cap; 0 means no cap.
- why an upstream was cut off is kept per client connection, in a WeakKeyDictionary keyed by
  mitmproxy's ``Client`` object, which belongs to exactly one master: Limits notes it
  (``note_upstream_timeout``), the wrapped ``send`` takes it, and the entry dies with the
  connection. (The layer's context does not reach the Limits instance, so it cannot live there.)
"""

from __future__ import annotations

import functools
import logging
import re
import weakref
from typing import Any

from mitmproxy import connection, http, version
from mitmproxy.net.http import http1 as http1_net
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import ResponseProtocolError

from addons.errors import error_body

logger = logging.getLogger(__name__)

# Major versions whose _http1 this was written against and checked with (12.0 to 12.3).
SUPPORTED_MAJOR = 12
HEAD_LIMIT_OPTION = "max_header_size"

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_timed_out: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
_installed: bool | None = None  # None: install() not called yet; False: refused (unsupported version)


def supported(mitmproxy_version: str) -> bool:
    """Whether the wraps fit this mitmproxy version (12.x)."""
    major = mitmproxy_version.split(".", 1)[0]
    return major.isdigit() and int(major) == SUPPORTED_MAJOR


def install() -> bool:
    """Wrap the four functions, once per process. Returns whether the wraps are in place.

    Outside mitmproxy 12.x it changes nothing and logs one warning: the private functions it wraps
    may have changed, and a wrong wrap is worse than none.
    """
    global _installed
    if _installed is None:
        if supported(version.VERSION):
            _wrap()
            _installed = True
        else:
            logger.warning("mitmproxy %s is not the 12.x this proxy was written for: the request-head size cap "
                           "and JSON error pages are off", version.VERSION)
            _installed = False
    return _installed


def note_upstream_timeout(client: connection.Client, message: str) -> None:
    """The next error page on this client connection says ``message`` (the upstream was cut off)."""
    _timed_out[client] = message


def forget(client: connection.Client) -> None:
    """The client connection closed: drop what was noted for it."""
    _timed_out.pop(client, None)


def head_limit(options: Any) -> int | None:
    """The request-head cap in bytes for a connection with these options, or None for no cap."""
    if HEAD_LIMIT_OPTION not in options:
        return None
    limit = getattr(options, HEAD_LIMIT_OPTION)
    return limit if limit > 0 else None


def _wrap() -> None:
    original_send = _http1.Http1Server.send
    original_read_headers = _http1.Http1Server.read_headers

    @functools.wraps(original_read_headers)
    def read_headers(self: Any, event: Any) -> Any:
        if isinstance(event, events.DataReceived):
            limit = head_limit(self.context.options)
            if limit is not None and len(self.buf) > limit:
                received = bytes(self.buf)  # only while a head is being read: small
                end = _HEAD_END.search(received)
                if (end.end() if end else len(received)) > limit:
                    yield commands.SendData(self.conn, _http1.make_error_response(
                        431, f"The request head exceeds {limit} bytes."))
                    yield commands.CloseConnection(self.conn)
                    self.state = self.done
                    return
        yield from original_read_headers(self, event)

    @functools.wraps(original_send)
    def send(self: Any, event: Any) -> Any:
        if isinstance(event, ResponseProtocolError):
            message = _timed_out.pop(self.context.client, None)
            if message is not None:
                event = ResponseProtocolError(event.stream_id, message, event.code)
        return original_send(self, event)

    @functools.wraps(_http1.make_error_response)
    def make_error_response(status_code: int, message: str = "") -> bytes:
        status_code = error_status(status_code, message)
        body = error_body(status_code, message or "gcp-auth-proxy could not complete the request.", "proxyError")
        response = http.Response.make(status_code, body, {
            "content-type": "application/json; charset=UTF-8", "connection": "close", "cache-control": "no-store"})
        return http1_net.assemble_response(response)

    _http1.Http1Server.send = send  # type: ignore[method-assign]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]
    _http1.make_error_response = make_error_response
    _wrap_h2()


def error_status(status_code: int, message: str) -> int:
    """The status an error page gets: a 502 whose cause timed out is a 504 (a gateway timeout)."""
    return 504 if status_code == 502 and "timed out" in message else status_code


def _wrap_h2() -> None:
    original_handle_event = _http2.Http2Server._handle_event

    @functools.wraps(original_handle_event)
    def handle_event(self: Any, event: Any) -> Any:
        if isinstance(event, ResponseProtocolError):
            status = event.code.http_status_code()
            stream = self.h2_conn.streams.get(event.stream_id)
            # The same conditions under which mitmproxy sends its HTML page (else it resets the stream).
            if (status is not None and stream is not None and self.is_open_for_us(event.stream_id)
                    and not stream.state_machine.headers_sent):
                message = _timed_out.pop(self.context.client, None) or event.message
                status = error_status(status, message)
                body = error_body(status, message or "gcp-auth-proxy could not complete the request.", "proxyError")
                self.h2_conn.send_headers(event.stream_id, [
                    (b":status", b"%d" % status), (b"content-type", b"application/json; charset=UTF-8"),
                    (b"content-length", b"%d" % len(body)), (b"cache-control", b"no-store")])
                self.h2_conn.send_data(event.stream_id, body, end_stream=True)
                yield commands.SendData(self.conn, self.h2_conn.data_to_send())
                return
        yield from original_handle_event(self, event)

    _http2.Http2Server._handle_event = handle_event  # type: ignore[method-assign]
