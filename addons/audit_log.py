"""One JSON line per request to an injected host, written when the flow ends.

A stream gets its line at its end: a streamed response (server-sent events, a download, gRPC)
when its last byte has passed, a WebSocket when it closes (messages and payload bytes each way,
close code), and one still open when the proxy shuts down with ``error: "shutdown"``.
The audit log is a data product: the fields of :func:`audit_record` are a stable schema
(docs/audit.md). It fails closed: while a record cannot be written, requests to injected hosts
get 503 instead of going upstream, and a response whose record could not be written is not
delivered. Tunnelled (non-injected) hosts are not audited: the proxy never sees inside them.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import stat
import sys
import time
import unicodedata
import weakref
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import ctx, exceptions, http

from addons import google_api, options, redact
from addons.destination import destination_of
from addons.errors import error_response
from addons.policy_model import API_KEY, recognise
from addons.proxy_auth import proxy_user_of

logger = logging.getLogger(__name__)

_BYTES_KEY = "gauth_bytes"  # flow.metadata key holding the stream counters
_WEBSOCKET_KEY = "gauth_websocket"  # flow.metadata key holding a WebSocket's message counters
SHUTDOWN_ERROR = "shutdown"
# Close codes of a WebSocket that ended as agreed (normal, going away); others are errors.
_CLEAN_CLOSE_CODES = frozenset({1000, 1001})
UPLOAD_ID_HEADER = "x-guploader-uploadid"


# -- body sizes without buffering --------------------------------------------------------------------

class ByteCounter:
    """A ``Message.stream`` callable: passes every chunk through unchanged and counts it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.count += len(chunk)
        return chunk


def refused_connect(flow: http.HTTPFlow) -> bool:
    """A CONNECT the rules or the host policy refused (403), which never becomes a request; a 407
    challenge is the normal start of proxy auth, not counted."""
    meta = flow.metadata.get("gauth")
    return bool(meta and meta.get("auth") == "denied" and flow.response is not None
                and flow.response.status_code == 403)


def count_request_stream(flow: http.HTTPFlow) -> None:
    """Count a request body mitmproxy decided to stream (call in ``requestheaders``; idempotent).

    Only a stream already switched on is wrapped: switching one on ourselves would take the
    buffered body away from the 401 replay.
    """
    if flow.request.stream is True and flow.response is None:
        counter = ByteCounter()
        flow.request.stream = counter
        flow.metadata.setdefault(_BYTES_KEY, {})["request"] = counter


def count_response_stream(flow: http.HTTPFlow) -> None:
    """Count a response body mitmproxy decided to stream (call in ``responseheaders``; idempotent)."""
    if flow.response is not None and flow.response.stream is True:
        counter = ByteCounter()
        flow.response.stream = counter
        flow.metadata.setdefault(_BYTES_KEY, {})["response"] = counter


class AuditedResponse(ByteCounter):
    """A streamed response's ``Message.stream``: counts it, and writes its record at its end,
    before that end reaches the client.

    mitmproxy calls it with each chunk, then once with ``b""`` at the end of the body, and only
    then (after the ``response`` hook) sends the end of the message: the last chunk of a chunked
    body, HTTP/2 END_STREAM. A body framed by Content-Length is complete at its last byte, so that
    byte is kept until the record is written. If it cannot be written, the end never goes: the
    client gets a cut-off answer, never a complete result of an unrecorded call.
    """

    def __init__(self, write: Any, flow: http.HTTPFlow) -> None:
        super().__init__()
        self._write = write  # AuditLog._write: flow -> bool
        self._flow = weakref.ref(flow)  # the flow holds this object: no strong cycle
        assert flow.response is not None
        length = flow.response.headers.get("content-length", "").strip()
        self._length = int(length) if length.isascii() and length.isdigit() else None
        self._held = b""
        self.recorded: bool | None = None  # None: the body has not ended

    def __call__(self, chunk: bytes) -> bytes:
        if chunk:
            self.count += len(chunk)
            if self._held:  # only if more came after the announced length (upstream framing error)
                chunk, self._held = self._held + chunk, b""
            if self._length is not None and self.count >= self._length:
                chunk, self._held = chunk[:-1], chunk[-1:]
            return chunk
        flow = self._flow()
        self.recorded = flow is not None and self._write(flow)
        return self._held if self.recorded else b""


def _recorded_at_end(flow: http.HTTPFlow) -> bool | None:
    """Whether the record of a streamed response was written at its end; None: it has not ended."""
    stream = flow.response.stream if flow.response is not None else None
    return stream.recorded if isinstance(stream, AuditedResponse) else None


class WebSocketCounts:
    """Messages and payload bytes of one WebSocket, each way (client -> server is "request").

    A plain class: ``mitmdump -s`` loads this file outside ``sys.modules``, where @dataclass fails.
    """

    __slots__ = ("request_bytes", "request_messages", "response_bytes", "response_messages")

    def __init__(self) -> None:
        self.request_messages = 0
        self.request_bytes = 0
        self.response_messages = 0
        self.response_bytes = 0


def count_websocket_message(flow: http.HTTPFlow) -> None:
    """Count the message the ``websocket_message`` hook is about (the flow's last one)."""
    if flow.websocket is None or not flow.websocket.messages:
        return
    message = flow.websocket.messages[-1]
    counts = flow.metadata.setdefault(_WEBSOCKET_KEY, WebSocketCounts())
    if message.from_client:
        counts.request_messages += 1
        counts.request_bytes += len(message.content)
    else:
        counts.response_messages += 1
        counts.response_bytes += len(message.content)


def body_bytes(flow: http.HTTPFlow, which: str) -> int | None:
    """Body bytes that passed: counted when streamed, measured when buffered, else Content-Length.

    None when unknown: a body of unannounced length that mitmproxy switched to streaming midway.
    """
    message: http.Message | None = flow.request if which == "request" else flow.response
    if message is None:
        return None
    counter = flow.metadata.get(_BYTES_KEY, {}).get(which)
    if counter is not None:
        return int(counter.count)
    if message.raw_content is not None:
        return len(message.raw_content)
    length = message.headers.get("content-length", "")
    return int(length) if length.isascii() and length.isdigit() else None  # "²".isdigit() is True


# -- the record ----------------------------------------------------------------------------------------

def audit_record(flow: http.HTTPFlow, now: float | None = None) -> dict[str, Any]:
    """The audit record for a finished flow (schema in docs/audit.md); every string is redacted."""
    meta = flow.metadata.get("gauth", {})
    request = flow.request
    response = flow.response
    host = meta.get("host") or _requested_host(flow)
    websocket = flow.websocket
    if websocket is not None:
        end = websocket.timestamp_end or now or time.time()
    else:
        end = (response.timestamp_end if response is not None else None) or now or time.time()
    # as the rules saw it (recognised once per request when there are rules)
    seen = meta.get(API_KEY)
    if seen is not None and seen[:3] == (host, request.method, request.path):
        api = seen[3]
    else:
        api = recognise(host, request.method, request.path, request.headers.get("content-type", ""))
    record: dict[str, Any] = {
        "time": _rfc3339(request.timestamp_start),
        "duration_ms": round(max(0.0, end - request.timestamp_start) * 1000, 1),
        "client": _address(flow.client_conn.peername),
        "method": request.method,
        "scheme": "http" if meta.get("upgraded") else request.scheme,
        "host": host,
        "path": redact.redact_url(request.path),
        "status": response.status_code if response is not None else None,
        "request_bytes": body_bytes(flow, "request"),
        "response_bytes": body_bytes(flow, "response"),
        "http_version": request.http_version,
        "auth": meta.get("auth", "none"),
        "principal": meta.get("principal"),
        "token_id": meta.get("token_id"),
        # who spoke as whom, and what decided it (issue 12); the proxy user's name, never a password
        "route": meta.get("route"),
        "credential": meta.get("credential"),
        "rule": meta.get("rule"),
        "proxy_user": proxy_user_of(flow),
    }
    if meta.get("quota_project"):
        record["quota_project"] = meta["quota_project"]
    if websocket is not None:
        _add_websocket(record, flow, websocket)
    for name, value in zip(("service", "api_method", "resource"), api):
        if value:
            record[name] = redact.redact_text(value)
    if meta.get("retried"):
        record["retried"] = True
    if response is not None:  # gRPC: the call's own status, in its trailers (Trailers-Only: headers)
        grpc_status = google_api.grpc_status(response.trailers, response.headers)
        if grpc_status is not None:
            record["grpc_status"] = grpc_status
    upstream_id = _upstream_request_id(flow)
    if upstream_id:
        record["upstream_request_id"] = upstream_id
    if meta.get("error"):  # the proxy's own reason says more than "Connection killed."
        record["error"] = redact.redact_text(meta["error"])
    elif flow.error:
        record["error"] = redact.redact_text(flow.error.msg)
    elif websocket is not None and websocket.close_code not in (None, *_CLEAN_CLOSE_CODES):
        side = "client" if websocket.closed_by_client else "server"
        reason = f": {websocket.close_reason}" if websocket.close_reason else ""
        record["error"] = redact.redact_text(
            f"the {side} closed the WebSocket with code {websocket.close_code}{reason}")
    return record


def _add_websocket(record: dict[str, Any], flow: http.HTTPFlow, websocket: Any) -> None:
    """A WebSocket's record: its messages and payload bytes each way replace the body sizes."""
    counts = flow.metadata.get(_WEBSOCKET_KEY) or WebSocketCounts()
    record["websocket"] = True
    record["request_bytes"] = counts.request_bytes
    record["response_bytes"] = counts.response_bytes
    record["request_messages"] = counts.request_messages
    record["response_messages"] = counts.response_messages
    record["close_code"] = websocket.close_code
    if websocket.close_code is not None:
        record["closed_by"] = "client" if websocket.closed_by_client else "server"


def _requested_host(flow: http.HTTPFlow) -> str:
    """Where the request really went (addons/destination.py), never a name the client only claimed."""
    destination = destination_of(flow)
    if destination is not None:
        return destination.host
    if flow.client_conn.tls and flow.client_conn.sni:
        return flow.client_conn.sni.lower()
    return flow.request.host.lower()


def _address(peer: Any) -> str | None:
    if not peer:
        return None
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _upstream_request_id(flow: http.HTTPFlow) -> str | None:
    """Google's upload/request id for support cases; fingerprinted where it is a resumable-upload
    session id (the session URI accepts data without credentials)."""
    if flow.response is None:
        return None
    value = flow.response.headers.get(UPLOAD_ID_HEADER)
    if not value:
        return None
    session_ids = {v for k, v in parse_qsl(urlsplit(flow.request.path).query) if k.lower() == "upload_id"}
    location = flow.response.headers.get("location", "")
    session_ids |= {v for k, v in parse_qsl(urlsplit(location).query) if k.lower() == "upload_id"}
    if value in session_ids or "uploadType=resumable" in flow.request.path:
        return redact.fingerprint(value)
    return redact.redact_text(value)


def _rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- the line --------------------------------------------------------------------------------------

# Characters a line-based reader or a terminal must never get raw: controls (C0, DEL, C1, which
# include NEL), lone surrogates, line/paragraph separators, and format characters (bidi overrides,
# zero-width), which can make a record display as something else.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Cf"})


def escape_text(text: str) -> str:
    """``text`` with every character a reader could choke on written out as visible escapes.

    mitmproxy decodes request bytes that are not UTF-8 with ``surrogateescape`` (byte 0xff becomes
    U+DCFF), which ``str.encode()`` refuses: such a byte becomes the four characters ``\\xff``.
    Any other unsafe character becomes ``\\uXXXX`` (``\\UXXXXXXXX`` beyond the BMP). Everything
    else, including printable non-ASCII, is kept. A backslash the client sent is kept as is.
    """
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to look at
    return "".join(_escape_char(c) for c in text)


def _escape_char(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _escape_values(value: Any) -> Any:
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, Mapping):
        return {escape_text(str(k)): _escape_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_escape_values(v) for v in value]
    return value


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One newline-terminated JSON line, valid UTF-8, whatever bytes the client sent.

    The line holds no raw control character, U+2028/U+2029 or lone surrogate (see
    :func:`escape_text`), so every JSON parser and line-based tool reads it as one record.

    Raises:
        ValueError, TypeError: the record holds something JSON cannot carry (NaN, an object).
    """
    text = json.dumps(_escape_values(record), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8") + b"\n"


# -- the file --------------------------------------------------------------------------------------

class UnsafeAuditLog(Exception):
    """The audit log path names something another user could have planted; the message says what."""


# O_NONBLOCK: a FIFO planted at the path must not hang the open (it is refused after fstat).
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def open_log_file(path: str) -> int:
    """Open ``path`` for appending, refusing anything the proxy's user did not make for itself.

    A new file is created with ``O_EXCL`` and mode 0600. An existing one is opened with
    ``O_NOFOLLOW`` (a symlink as the last component is refused, never followed) and judged by
    ``fstat`` on the open descriptor, so it cannot be swapped between the check and the writes.

    Raises:
        UnsafeAuditLog: a symlink, or a file :func:`unsafe_file` refuses.
        OSError: the file cannot be opened.
    """
    try:
        fd = os.open(path, _APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, _APPEND)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK) and _is_symlink(path):  # EMLINK: BSDs
                raise UnsafeAuditLog("it is a symbolic link") from None
            raise
    try:
        why = unsafe_file(os.fstat(fd), os.geteuid())
        if why:
            raise UnsafeAuditLog(why)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unsafe_file(st: os.stat_result, euid: int) -> str | None:
    """Why an opened audit log must not be appended to (one clause), or None when it is fine.

    Device nodes (``/dev/null``, ``/dev/full``) pass: only root can make them.
    """
    mode = st.st_mode
    if stat.S_ISCHR(mode):
        return None
    if not stat.S_ISREG(mode):
        return "it is not a regular file"
    if st.st_uid != euid:
        return f"it is owned by uid {st.st_uid}, not by the proxy's user (uid {euid})"
    if mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(mode):04o})"
    if st.st_nlink > 1:  # a hard link to another file is a symlink that O_NOFOLLOW cannot see
        return f"it has {st.st_nlink} hard links"
    return None


def _is_symlink(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _open_error(e: OSError | UnsafeAuditLog) -> str:
    if isinstance(e, UnsafeAuditLog):
        return str(e)
    return e.strerror or str(e)


def _write_all(fd: int, data: bytes) -> None:
    # One write() of one line on an O_APPEND file: lines never interleave or tear.
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def refuse_streamed(flow: http.HTTPFlow, why: str) -> None:
    """Refuse a request whose body mitmproxy streams: it cannot be answered, so it is cut off.

    mitmproxy raises ("Can't set a response and enable streaming at the same time") and drops
    the connection unrecorded if an addon answers such a request; killing it instead closes the
    client's stream and fires the error hook, so the refusal is audited.
    """
    meta = flow.metadata.setdefault("gauth", {})
    meta["error"] = (f"{meta.get('error') or why} (would have answered {why}; the request body was "
                     "streaming, so the connection was closed instead)")
    flow.response = None
    flow.kill()


# -- the addon -------------------------------------------------------------------------------------------

class AuditLog:
    def __init__(self) -> None:
        self._fd: int | None = None
        self._path: str = ""
        self.broken: str | None = None  # why writing failed; requests to injected hosts stop
        self.records_written = 0
        # Audited flows not yet recorded (streams in progress, WebSockets): recorded at shutdown.
        self._unrecorded: weakref.WeakValueDictionary[str, http.HTTPFlow] = weakref.WeakValueDictionary()
        self._done = False  # after done(): the file is closed, late hooks write nothing

    def load(self, loader: Any) -> None:
        options.declare(loader, "audit_log")

    def configure(self, updated: set[str]) -> None:
        if "audit_log" in updated:
            self._close()
            self._path = ctx.options.audit_log
            self.broken = None
            if self._path:
                try:
                    self._open()
                except UnsafeAuditLog as e:
                    raise exceptions.OptionsError(f"refusing audit log {self._path}: {e}") from e
                except OSError as e:
                    raise exceptions.OptionsError(f"cannot open audit log {self._path}: {e.strerror}") from e

    @property
    def enabled(self) -> bool:
        return bool(self._path)

    def _open(self) -> None:
        if self._path == "-":
            self._fd = sys.stdout.fileno()
            return
        self._fd = open_log_file(self._path)

    def _close(self) -> None:
        if self._fd is not None and self._path != "-":
            os.close(self._fd)
        self._fd = None

    def reopen(self) -> bool:
        """Reopen the file by name (logrotate moved it); called on SIGHUP. False: refused/failed.

        A failure never raises (it would land in the signal handler): traffic to injected hosts
        stops, as for a write error, with one error line per attempt.
        """
        if not self._path:
            return True
        self._close()
        try:
            self._open()
        except (OSError, UnsafeAuditLog) as e:
            self.broken = f"not reopened: {_open_error(e)}"
            logger.error("audit log %s %s; refusing requests to Google until a SIGHUP reopens it",
                         self._path, self.broken)
            return False
        if self.broken:
            logger.warning("audit log %s writable again: passing requests to injected hosts", self._path)
        self.broken = None
        return True

    # -- hooks ---------------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Runs after token injection, as the last thing before the request goes upstream.
        if "gauth" not in flow.metadata:
            return
        if flow.response is not None and flow.request.stream and flow.live:
            refuse_streamed(flow, f"{flow.response.status_code}")
            return
        if not self.enabled:
            return
        self._unrecorded[flow.id] = flow
        count_request_stream(flow)
        self._refuse_if_broken(flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        """A CONNECT the rules or the host policy refused never becomes a request: record it here."""
        if self.enabled and refused_connect(flow):
            self._write(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        # A buffered body may take long to arrive: check again right before it is sent.
        if self.enabled and "gauth" in flow.metadata and not flow.request.stream:
            self._refuse_if_broken(flow)

    def _refuse_if_broken(self, flow: http.HTTPFlow) -> None:
        if not self.broken or flow.response is not None or flow.error or not flow.live:
            return
        flow.metadata["gauth"]["audit_refused"] = True
        if flow.request.stream:
            flow.metadata["gauth"].setdefault("error", f"the audit log cannot be written ({self.broken})")
            refuse_streamed(flow, "503")
            return
        flow.response = error_response(
            503,
            "gcp-auth-proxy stopped passing requests to Google because its audit log cannot be "
            f"written ({self.broken}).",
            "auditLogUnavailable", request=flow.request,
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or "gauth" not in flow.metadata or flow.response is None:
            return
        if flow.response.stream is True:
            counter = AuditedResponse(self._write, flow)
            flow.response.stream = counter
            flow.metadata.setdefault(_BYTES_KEY, {})["response"] = counter

    def response(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or "gauth" not in flow.metadata or self._done:
            return
        if flow.websocket is not None:
            return  # a WebSocket follows: its record is written when it closes (websocket_end)
        self._unrecorded.pop(flow.id, None)
        recorded = _recorded_at_end(flow)
        if recorded is None:  # not streamed to its end: written now
            recorded = self._write(flow)
        if recorded or flow.metadata["gauth"].get("audit_refused"):
            return
        # The call went upstream but is not on record: do not deliver its result.
        assert flow.response is not None
        if flow.response.stream:
            flow.kill()  # body already sent; the client sees an aborted response, not a complete one
        else:
            flow.response = error_response(
                503,
                "gcp-auth-proxy could not record this request in its audit log "
                f"({self.broken}); the response was withheld.",
                "auditLogUnavailable", request=flow.request,
            )

    def error(self, flow: http.HTTPFlow) -> None:
        if self.enabled and "gauth" in flow.metadata and not self._done:
            self._unrecorded.pop(flow.id, None)
            if _recorded_at_end(flow) is None:  # else the record went out with the body's end
                self._write(flow)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if self.enabled and "gauth" in flow.metadata:
            count_websocket_message(flow)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        if self.enabled and "gauth" in flow.metadata and not self._done:
            self._unrecorded.pop(flow.id, None)
            self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> bool:
        """Append the flow's record; False when it could not be written (and the log is broken)."""
        if self._fd is None:
            if self.broken is None:
                self._fail("not open")
            return False
        # Anything that escapes a hook is only logged and the flow goes on: a record that cannot be
        # built or written must take the fail-closed path below, whatever the exception.
        try:
            line = encode_record(audit_record(flow))
        except Exception as e:
            logger.debug("audit record could not be encoded", exc_info=True)
            self._fail(f"a record could not be encoded: {type(e).__name__}")
            return False
        try:
            _write_all(self._fd, line)
        except OSError as e:
            self._fail(e.strerror or str(e))
            return False
        except Exception as e:
            logger.debug("audit record could not be written", exc_info=True)
            self._fail(type(e).__name__)
            return False
        self.records_written += 1
        if self.broken is not None:
            # Writing works again (e.g. the disk has space): the refused request's record got through.
            logger.warning("audit log %s writable again: passing requests to injected hosts", self._path)
            self.broken = None
        return True

    def _fail(self, reason: str) -> None:
        if self.broken is None:
            logger.error("audit log %s cannot be written (%s): refusing requests to Google until it can",
                         self._path, reason)
        self.broken = reason

    def done(self) -> None:
        """Record every audited stream still open (``error: "shutdown"``), then close the file."""
        for flow in sorted(self._unrecorded.values(), key=lambda f: f.request.timestamp_start):
            if _recorded_at_end(flow) is not None:
                continue  # its body ended (and its record was written) just before the shutdown
            flow.metadata.setdefault("gauth", {})["error"] = SHUTDOWN_ERROR
            self._write(flow)
        self._unrecorded.clear()
        self._done = True
        self._close()


addons = [AuditLog()]
