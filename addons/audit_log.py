"""One JSON line per request to an injected host, written when the flow ends.

The audit log is a data product: the fields of :func:`audit_record` are a stable schema
(docs/audit.md). It fails closed: while a record cannot be written, requests to injected hosts
get 503 instead of going upstream, and a response whose record could not be written is not
delivered. Tunnelled (non-injected) hosts are not audited: the proxy never sees inside them.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mitmproxy import ctx, exceptions, http

from addons import google_api, redact
from addons.errors import error_response

logger = logging.getLogger(__name__)

_BYTES_KEY = "gauth_bytes"  # flow.metadata key holding the stream counters
UPLOAD_ID_HEADER = "x-guploader-uploadid"


# -- body sizes without buffering --------------------------------------------------------------------

class ByteCounter:
    """A ``Message.stream`` callable: passes every chunk through unchanged and counts it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, chunk: bytes) -> bytes:
        self.count += len(chunk)
        return chunk


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
    return int(length) if length.isdigit() else None


# -- the record ----------------------------------------------------------------------------------------

def audit_record(flow: http.HTTPFlow, now: float | None = None) -> dict[str, Any]:
    """The audit record for a finished flow (schema in docs/audit.md); every string is redacted."""
    meta = flow.metadata.get("gauth", {})
    request = flow.request
    response = flow.response
    host = meta.get("host") or _requested_host(flow)
    end = (response.timestamp_end if response is not None else None) or now or time.time()
    api = google_api.describe(host, request.method, request.path)
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
    }
    if meta.get("quota_project"):
        record["quota_project"] = meta["quota_project"]
    for name, value in zip(("service", "api_method", "resource"), api):
        if value:
            record[name] = redact.redact_text(value)
    if meta.get("retried"):
        record["retried"] = True
    upstream_id = _upstream_request_id(flow)
    if upstream_id:
        record["upstream_request_id"] = upstream_id
    if meta.get("error"):  # the proxy's own reason says more than "Connection killed."
        record["error"] = redact.redact_text(meta["error"])
    elif flow.error:
        record["error"] = redact.redact_text(flow.error.msg)
    return record


def _requested_host(flow: http.HTTPFlow) -> str:
    """The name the client asked for (TLS server name), never an address an override put there."""
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

    def load(self, loader: Any) -> None:
        loader.add_option(
            "audit_log", str, "",
            "Append one JSON line per request to an injected host to this file ('-' for stdout). "
            "Reopened on SIGHUP (logrotate).",
        )

    def configure(self, updated: set[str]) -> None:
        if "audit_log" in updated:
            self._close()
            self._path = ctx.options.audit_log
            self.broken = None
            if self._path:
                try:
                    self._open()
                except OSError as e:
                    raise exceptions.OptionsError(f"cannot open audit log {self._path}: {e.strerror}") from e

    @property
    def enabled(self) -> bool:
        return bool(self._path)

    def _open(self) -> None:
        if self._path == "-":
            self._fd = sys.stdout.fileno()
            return
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def _close(self) -> None:
        if self._fd is not None and self._path != "-":
            os.close(self._fd)
        self._fd = None

    def reopen(self) -> None:
        """Reopen the file by name (logrotate moved it); called on SIGHUP."""
        if not self._path:
            return
        self._close()
        try:
            self._open()
        except OSError as e:
            self._fail(f"cannot reopen: {e.strerror}")
            return
        if self.broken:
            logger.warning("audit log %s writable again: passing requests to injected hosts", self._path)
        self.broken = None

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
        count_request_stream(flow)
        self._refuse_if_broken(flow)

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
            "auditLogUnavailable",
        )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.enabled and "gauth" in flow.metadata:
            count_response_stream(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        if not self.enabled or "gauth" not in flow.metadata:
            return
        if self._write(flow) or flow.metadata["gauth"].get("audit_refused"):
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
                "auditLogUnavailable",
            )

    def error(self, flow: http.HTTPFlow) -> None:
        if self.enabled and "gauth" in flow.metadata:
            self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> bool:
        """Append the flow's record; False when it could not be written (and the log is broken)."""
        if self._fd is None:
            if self.broken is None:
                self._fail("not open")
            return False
        line = json.dumps(audit_record(flow), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            # One write() of one line on an O_APPEND file: lines never interleave or tear.
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            self._fail(e.strerror or str(e))
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
        self._close()


addons = [AuditLog()]
