"""Proxy-generated responses shaped like Google API errors, so clients print something useful."""

from __future__ import annotations

import json

from mitmproxy import http

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    407: "UNAUTHENTICATED",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(code: int, message: str, reason: str | None = None) -> bytes:
    """``{"error": {"code", "status", "message"}}`` as Google APIs answer."""
    error: dict[str, object] = {"code": code, "status": _STATUS.get(code, "UNKNOWN"), "message": message}
    if reason:
        error["errors"] = [{"reason": reason, "domain": "gcp-auth-proxy", "message": message}]
    return json.dumps({"error": error}).encode()


def error_response(code: int, message: str, reason: str | None = None) -> http.Response:
    return http.Response.make(
        code,
        error_body(code, message, reason),
        {"content-type": "application/json; charset=UTF-8", "cache-control": "no-store"},
    )
