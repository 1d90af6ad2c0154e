"""Strips the placeholder tokens ``run``'s metadata endpoint hands out from every request it sees.

The rule: a request header whose value carries a placeholder is removed (the whole field, so a
comma-joined or cookie value goes with it), and so is a query parameter whose name or value
carries one. A value carries a placeholder when it holds

- ``PLACEHOLDER_PREFIX`` in any case, anywhere: every scheme spelling (``Bearer<TAB>``,
  ``bEaReR``, none at all), any header (``X-Goog-*``, ``X-Serverless-Authorization``,
  ``Proxy-Authorization``, cookies), and any earlier run's placeholder, which tools cache;
- that prefix base64-encoded at any of the three alignments (``Basic`` credentials such as
  ``oauth2accesstoken:<token>``, Docker's ``X-Registry-Auth``);
- one of this run's exact placeholders as a whole token, compared in constant time.

A request that lost anything gets ``flow.metadata["gauth"]["placeholder"] = True``. On an injected
host the request then carries no Authorization, so GoogleAuth (which runs next) adds the real
token; anywhere else the placeholder never leaves the proxy. Only what the proxy sees is
stripped: plain HTTP and intercepted (injected) hosts, not TLS tunnelled to other hosts; paths and
bodies are not searched either. A placeholder is worth nothing anywhere but this proxy, which
strips it. Must run before GoogleAuth. Load alone with
``mitmdump -s addons/placeholder.py --set placeholder_tokens=TOKEN``.
"""

from __future__ import annotations

import base64
import hmac
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons import options

MIN_PLACEHOLDER_LENGTH = 32  # a short placeholder could be guessed or collide with a real token
# Every placeholder `run` hands out starts with this. Tools cache tokens across runs (gsutil keeps
# them in ~/.gsutil), so a placeholder from an earlier run is stripped too: it is worthless, and
# a request carrying it is treated exactly like one without credentials.
PLACEHOLDER_PREFIX = "gcp-auth-proxy-placeholder."

_PREFIX = PLACEHOLDER_PREFIX.encode()
# A bearer token's characters (RFC 6750 b64token without the '=' padding, so `access_token=X`
# splits into two tokens). Configured placeholders must consist of these.
_TOKEN = re.compile(rb"[A-Za-z0-9._~+/-]+")


def _base64_forms(text: bytes) -> frozenset[bytes]:
    """The base64 characters that ``text`` alone decides, for each offset mod 3 it may start at."""
    forms = set()
    for offset in range(3):
        padded = b"\0" * offset + text
        end = 4 * (len(padded) // 3)  # a trailing partial group depends on what follows
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            forms.add(encode(padded)[4 if offset else 0:end])  # the first group mixes in the offset
    return frozenset(forms)


_PREFIX_BASE64 = _base64_forms(_PREFIX)


def contains_placeholder(value: bytes, placeholders: Sequence[bytes] = ()) -> bool:
    """Whether a header value or query parameter carries a placeholder (see the module docstring)."""
    # The prefix is public: finding it early says nothing about a placeholder.
    if _PREFIX in value.lower() or any(form in value for form in _PREFIX_BASE64):
        return True
    found = False
    lengths = {len(p) for p in placeholders}  # lengths are not secret (compare_digest tells them too)
    for candidate in _TOKEN.findall(value) if placeholders else ():
        if len(candidate) in lengths:
            for p in placeholders:
                found |= hmac.compare_digest(candidate, p)
    return found


def strip_placeholders(request: http.Request, placeholders: Sequence[bytes]) -> bool:
    """Remove every header field and query parameter that carries a placeholder; True if any did.

    One search over all header values and one over the query; field by field only after a hit.
    """
    stripped = False
    fields = request.headers.fields
    # "\n" is neither in the prefix nor a token character: no match spans two values.
    if contains_placeholder(b"\n".join(value for _, value in fields), placeholders):
        request.headers.fields = tuple(f for f in fields if not contains_placeholder(f[1], placeholders))
        stripped = True
    path, question, query = request.data.path.partition(b"?")
    if question and _query_carries(query, placeholders):
        # Raw segments, so the parameters that stay are sent exactly as the client wrote them.
        kept = [p for p in query.split(b"&") if not _query_carries(p, placeholders)]
        request.data.path = path + b"?" + b"&".join(kept) if kept else path
        stripped = True
    return stripped


def _query_carries(text: bytes, placeholders: Sequence[bytes]) -> bool:
    """As written and percent-decoded (``%67cp-auth-...``)."""
    return contains_placeholder(text + b"\n" + urllib.parse.unquote_to_bytes(text), placeholders)


class PlaceholderAuth:
    def __init__(self) -> None:
        self.placeholders: list[bytes] = []

    def load(self, loader: Any) -> None:
        options.declare(loader, "placeholder_tokens")

    def configure(self, updated: set[str]) -> None:
        if "placeholder_tokens" in updated:
            tokens = list(ctx.options.placeholder_tokens)
            if any(len(t) < MIN_PLACEHOLDER_LENGTH or not t.isascii() or not _TOKEN.fullmatch(t.encode())
                   for t in tokens):
                raise exceptions.OptionsError(
                    f"placeholder_tokens must be at least {MIN_PLACEHOLDER_LENGTH} characters long, "
                    "of letters, digits and . _ ~ + / -"
                )
            # Placeholders that start with the prefix are found by the prefix: only the others need
            # comparing, and `run`'s all start with it.
            self.placeholders = [t.encode() for t in tokens if not t.startswith(PLACEHOLDER_PREFIX)]

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        if strip_placeholders(flow.request, self.placeholders):
            flow.metadata.setdefault("gauth", {})["placeholder"] = True


addons = [PlaceholderAuth()]
