"""One JSON line per request to an injected host, written when the flow ends.

Fails closed: if a record cannot be written, requests to injected hosts get 503 rather than pass
unrecorded.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import threading
from typing import Any, BinaryIO

from mitmproxy import ctx, http

from addons import redact
from addons.errors import error_response

logger = logging.getLogger(__name__)


def audit_record(flow: http.HTTPFlow) -> dict[str, Any]:
    """The audit record for a finished flow; every string goes through redact."""
    meta = flow.metadata.get("gauth", {})
    request = flow.request
    response = flow.response
    record: dict[str, Any] = {
        "time": _rfc3339(request.timestamp_start),
        "method": request.method,
        "host": meta.get("host") or request.pretty_host,
        "path": redact.redact_url(request.path),
        "status": response.status_code if response else None,
        "auth": meta.get("auth", "none"),
        "principal": meta.get("principal"),
        "token_id": meta.get("token_id"),
    }
    if flow.error:
        record["error"] = redact.redact_text(flow.error.msg)
    elif meta.get("error"):
        record["error"] = redact.redact_text(meta["error"])
    return record


def _rfc3339(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    def __init__(self) -> None:
        self._file: BinaryIO | None = None
        self._path: str = ""
        self._lock = threading.Lock()
        self.broken: str | None = None  # why writing failed; requests to injected hosts stop

    def load(self, loader: Any) -> None:
        loader.add_option(
            "audit_log", str, "",
            "Append one JSON line per request to an injected host to this file ('-' for stdout).",
        )

    def configure(self, updated: set[str]) -> None:
        if "audit_log" in updated:
            self._close()
            self._path = ctx.options.audit_log
            self.broken = None
            if self._path:
                self._open()

    def _open(self) -> None:
        if self._path == "-":
            self._file = sys.stdout.buffer
            return
        try:
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            from mitmproxy import exceptions

            raise exceptions.OptionsError(f"cannot open audit log {self._path}: {e.strerror}") from e
        self._file = os.fdopen(fd, "ab", buffering=0)

    def _close(self) -> None:
        if self._file is not None and self._file is not sys.stdout.buffer:
            self._file.close()
        self._file = None

    def reopen(self) -> None:
        """Reopen the file (after logrotate moved it)."""
        with self._lock:
            self._close()
            if self._path:
                self._open()
                self.broken = None

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.broken and "gauth" in flow.metadata and flow.response is None:
            flow.response = error_response(
                503, f"gcp-auth-proxy stopped passing requests because its audit log cannot be written: {self.broken}",
                "auditLogUnavailable",
            )

    def response(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._write(flow)

    def _write(self, flow: http.HTTPFlow) -> None:
        if self._file is None or "gauth" not in flow.metadata:
            return
        line = json.dumps(audit_record(flow), separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                # One write() of one line on an O_APPEND file: lines never interleave or tear.
                self._file.write(line)
                if self._file is sys.stdout.buffer:
                    self._file.flush()
            except (OSError, ValueError) as e:
                if self.broken is None:
                    reason = getattr(e, "strerror", None) or str(e)
                    self.broken = reason
                    logger.error("audit log %s cannot be written (%s): refusing requests to injected hosts", self._path, reason)

    def done(self) -> None:
        self._close()


addons = [AuditLog()]
