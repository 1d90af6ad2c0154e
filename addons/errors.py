"""Proxy-generated responses shaped like Google API errors, so clients print something useful.

A gRPC call (``content-type: application/grpc...``) gets a trailers-only answer instead: HTTP 200
with ``grpc-status`` and ``grpc-message``, the way a gRPC server refuses a call. A gRPC client
reads nothing from an HTTP error's body: given a 502 it would report "Received http2 header with
status: 502" and lose the sentence that says what to fix.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from mitmproxy import http

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    407: "UNAUTHENTICATED",
    421: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# google.rpc.Code numbers of the status names above (and UNKNOWN for any other HTTP status).
GRPC_CODES = {
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "PERMISSION_DENIED": 7,
    "FAILED_PRECONDITION": 9,
    "RESOURCE_EXHAUSTED": 8,
    "UNAVAILABLE": 14,
    "UNAUTHENTICATED": 16,
}
# grpc-message is percent-encoded: every byte outside printable ASCII, and '%' itself.
_GRPC_MESSAGE_SAFE = " !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~"


def status_name(code: int) -> str:
    return _STATUS.get(code, "UNKNOWN")


def grpc_code(code: int) -> int:
    """The gRPC status a proxy error of HTTP status ``code`` becomes (502/503 stay retryable)."""
    return GRPC_CODES[status_name(code)]


def is_grpc(request: http.Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("application/grpc")


def error_body(code: int, message: str, reason: str | None = None) -> bytes:
    """``{"error": {"code", "status", "message"}}`` as Google APIs answer."""
    error: dict[str, object] = {"code": code, "status": status_name(code), "message": message}
    if reason:
        error["errors"] = [{"reason": reason, "domain": "gcp-auth-proxy", "message": message}]
    return json.dumps({"error": error}).encode()


def grpc_error_response(code: int, message: str) -> http.Response:
    """A trailers-only gRPC answer: the status and message a gRPC client shows its user."""
    return http.Response.make(200, b"", {
        "content-type": "application/grpc",
        "grpc-status": str(grpc_code(code)),
        # bytes: a lone surrogate (from a client's undecodable bytes) is written out, never raised on
        "grpc-message": quote(message.encode("utf-8", "backslashreplace"), safe=_GRPC_MESSAGE_SAFE),
        "cache-control": "no-store",
    })


def error_response(code: int, message: str, reason: str | None = None,
                   request: http.Request | None = None) -> http.Response:
    """The proxy's refusal of ``request``: Google-style JSON, or a gRPC status for a gRPC call."""
    if request is not None and is_grpc(request):
        return grpc_error_response(code, message)
    return http.Response.make(
        code,
        error_body(code, message, reason),
        {"content-type": "application/json; charset=UTF-8", "cache-control": "no-store"},
    )
