"""The one place we change mitmproxy's code: three wraps in its HTTP/1 server layer, mitmproxy 12.x only.

mitmproxy has no hook where these belong, so ``install()`` wraps private functions of
``mitmproxy.proxy.layers.http._http1`` (read as of mitmproxy 12.3):

- ``Http1Server.read_headers`` buffers a request head until its blank line without any bound
  (its own "FIXME: protect against header size DoS"): capped at the ``max_header_size``
  option with a 431 and a close. Only parsed, decrypted head bytes count, never a body.
- ``make_error_response``: JSON like ours instead of mitmproxy's HTML page, and an upstream that
  timed out is a 504, not mitmproxy's catch-all 502.
- ``Http1Server.send``: the error page for an upstream that Limits cut off says why (a read
  timeout), not "server closed connection".

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
from mitmproxy.proxy.layers.http import _http1
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
    """Wrap the three functions, once per process. Returns whether the wraps are in place.

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
        if status_code == 502 and "timed out" in message:
            status_code = 504
        body = error_body(status_code, message or "gcp-auth-proxy could not complete the request.", "proxyError")
        response = http.Response.make(status_code, body, {
            "content-type": "application/json; charset=UTF-8", "connection": "close", "cache-control": "no-store"})
        return http1_net.assemble_response(response)

    _http1.Http1Server.send = send  # type: ignore[method-assign]
    _http1.Http1Server.read_headers = read_headers  # type: ignore[method-assign]
    _http1.make_error_response = make_error_response
