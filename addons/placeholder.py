"""Strips placeholder bearer tokens handed out by ``run``'s metadata endpoint, on every host.

On an injected host the request then carries no Authorization, so GoogleAuth (which runs next)
adds the real token; anywhere else the placeholder simply never leaves the proxy. Must run
before GoogleAuth. Load alone with ``mitmdump -s addons/placeholder.py --set placeholder_tokens=TOKEN``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, exceptions, http

MIN_PLACEHOLDER_LENGTH = 32  # a short placeholder could be guessed or collide with a real token
# Every placeholder `run` hands out starts with this. Tools cache tokens across runs (gsutil keeps
# them in ~/.gsutil), so a placeholder from an earlier run is stripped too: it is worthless, and
# a request carrying it is treated exactly like one without credentials.
PLACEHOLDER_PREFIX = "gcp-auth-proxy-placeholder."


def is_placeholder(authorization: str, placeholders: Sequence[bytes]) -> bool:
    """``Bearer <placeholder>``: one of ``placeholders`` (constant time) or any earlier run's."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    candidate = value.strip().encode("latin-1", "replace")
    found = candidate.startswith(PLACEHOLDER_PREFIX.encode())
    for p in placeholders:
        found |= hmac.compare_digest(candidate, p)
    return found


class PlaceholderAuth:
    def __init__(self) -> None:
        self.placeholders: list[bytes] = []

    def load(self, loader: Any) -> None:
        loader.add_option(
            "placeholder_tokens", Sequence[str], [],
            "Placeholder bearer tokens to remove from requests (given to `run` children instead of "
            "real credentials); an injected host then gets the real token.",
        )

    def configure(self, updated: set[str]) -> None:
        if "placeholder_tokens" in updated:
            tokens = list(ctx.options.placeholder_tokens)
            if any(len(t) < MIN_PLACEHOLDER_LENGTH for t in tokens):
                raise exceptions.OptionsError(
                    f"placeholder_tokens must be at least {MIN_PLACEHOLDER_LENGTH} characters long"
                )
            self.placeholders = [t.encode() for t in tokens]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        values = flow.request.headers.get_all("authorization")
        if not values:
            return
        kept = [v for v in values if not is_placeholder(v, self.placeholders)]
        if len(kept) == len(values):
            return
        flow.request.headers.set_all("authorization", kept)
        flow.metadata.setdefault("gauth", {})["placeholder"] = True


addons = [PlaceholderAuth()]
