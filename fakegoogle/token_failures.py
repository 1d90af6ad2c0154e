"""Injected token-endpoint failures, shared by oauth2 /token and the metadata token path."""

from __future__ import annotations

import asyncio
import threading

from .http import Response, json_response
from .tokens import TokenStore

HANG_POLL_SECONDS = 0.05


async def failure_response(tokens: TokenStore, stopping: threading.Event) -> Response | None:
    """Return the response the current failure mode dictates, or None to proceed normally.

    "hang" parks the request (without blocking the event loop) until the mode
    changes or the server is stopping; polling keeps this thread-safe without
    cross-thread event plumbing.
    """
    while tokens.failure == "hang" and not stopping.is_set():
        await asyncio.sleep(HANG_POLL_SECONDS)
    if stopping.is_set():
        return json_response(503, {"error": "unavailable", "error_description": "server stopping"})
    mode = tokens.failure
    if mode == "500":
        return json_response(
            500,
            {"error": "internal_failure", "error_description": "Injected token endpoint failure."},
        )
    if mode == "invalid_grant":
        return json_response(
            400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        )
    if mode == "429":
        return json_response(
            429,
            {"error": "rate_limit_exceeded", "error_description": "Too many requests."},
            headers=[("retry-after", "1")],
        )
    return None
