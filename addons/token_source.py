"""One credential's tokens, for the event loop: load, cache, refresh ahead, back off, invalidate.

The whole token lifecycle lives here; GoogleAuth only decides which request gets a token.
``TokenCache`` (addons/token_cache.py) is the thread-safe, clock-injectable core that fetches
under a lock; this class is its asynchronous face: one fetch in flight at a time (single-flight
over a worker thread, never on the event loop), the cached token served while a refresh runs,
background retries while there is no token at all. One TokenSource per credential, made by the
composition root and handed to whoever needs token state (injection, /readyz, /metrics).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from addons import token_transport
from addons.credentials import credential_type, load_credentials, principal
from addons.resolve import ResolveRule
from addons.token_cache import Token, TokenCache
from addons.upstream_proxy import Routing

logger = logging.getLogger(__name__)


# Makes a credentials object from the scopes and the token transport (no network at this point).
CredentialsFactory = Callable[[Sequence[str], Any], Any]


def _adc(scopes: Sequence[str], transport: Any) -> Any:
    return load_credentials(scopes, transport)  # no project lookup, no refresh


class TokenSource:
    """``make``: how to build this credential (default: ADC). ``label``: what it is, for the logs."""

    def __init__(self, make: CredentialsFactory = _adc, label: str = "") -> None:
        self.make = make
        self.label = label
        self.cache: TokenCache | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._principal: tuple[tuple[Any, Any], str | None] | None = None
        self.routing = Routing()  # direct, unless UpstreamProxy hands over --upstream-proxy
        self._configured: tuple[Sequence[str], Sequence[ResolveRule], str | None] | None = None

    def configure(self, scopes: Sequence[str], rules: Sequence[ResolveRule], ca_bundle: str | None) -> None:
        """(Re)build the cache for these scopes, resolve rules and upstream CA bundle.

        Credentials load lazily, on the first fetch, off the event loop.
        """
        self._configured = (scopes, rules, ca_bundle)
        transport = token_transport.make_request(rules, ca_bundle, routing=self.routing)
        scopes = list(scopes)

        def load() -> Any:
            return self.make(scopes, transport)

        self.cache = TokenCache(load, transport)
        self.cache.on_change = self._log_state
        self._inflight = None

    def set_routing(self, routing: Routing) -> None:
        """Fetch tokens through this upstream proxy (or directly); rebuilds a configured cache."""
        if routing == self.routing:
            return
        self.routing = routing
        if self._configured is not None:
            self.configure(*self._configured)

    @property
    def credentials(self) -> Any:
        return self.cache.credentials if self.cache is not None else None

    @property
    def principal(self) -> str | None:
        """Who the tokens speak as; worked out once per credentials object (asked per request)."""
        creds = self.credentials
        if creds is None:
            return None
        # GCE credentials learn their email on the first fetch: that is part of the key.
        key = (creds, getattr(creds, "service_account_email", None))
        cached = self._principal
        if cached is None or cached[0][0] is not key[0] or cached[0][1] != key[1]:
            named = getattr(creds, "principal", None)  # impersonated and ID-token credentials say it
            cached = self._principal = (key, named if isinstance(named, str) else principal(creds))
        return cached[1]

    def _log_state(self, message: str) -> None:
        creds = self.credentials
        label = f" ({self.label})" if self.label else ""
        if creds is not None and message.startswith("token available"):
            logger.info("%s%s: %s credentials for %s", message, label, credential_type(creds),
                        self.principal or "unknown principal")
        else:
            logger.warning("%s%s", message, label)

    def start(self) -> None:
        """Warm the cache so the first request does not wait and the log names the principal early."""
        asyncio.get_running_loop().call_soon(self._start_refresh)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    def invalidate(self, value: str) -> None:
        """Upstream said 401 to ``value``: forget it if it is still the current token."""
        if self.cache is not None:
            self.cache.invalidate(value)

    async def token(self) -> Token:
        """A valid token; serves the cached one while a refresh runs in the background.

        Raises:
            TokenError: a fresh exception each time (no traceback grows), safe to show clients.
        """
        assert self.cache is not None, "configure() first"
        token = self.cache.current()
        if token is not None:
            if self.cache.refresh_due() and not self.cache.in_backoff():
                self._start_refresh()
            return token
        if self.cache.in_backoff():
            raise self.cache.failure()
        return await asyncio.shield(self._start_refresh())

    def _start_refresh(self) -> asyncio.Future[Token]:
        assert self.cache is not None
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.cache.refresh))
            self._inflight.add_done_callback(_consume_exception)
            self._inflight.add_done_callback(self._retry_without_token)
        return self._inflight

    def _retry_without_token(self, future: asyncio.Future[Token]) -> None:
        """With no token at all, keep trying in the background (a metadata server still coming
        up, an outage), at the cache's backoff pace, so the first request after recovery works."""
        if future.cancelled() or future.exception() is None or self.cache is None:
            return
        if self.cache.current() is None and (self._retry is None or self._retry.cancelled()):
            def retry() -> None:
                self._retry = None
                self._start_refresh()

            self._retry = asyncio.get_running_loop().call_later(max(0.05, self.cache.retry_in()), retry)


def _consume_exception(future: asyncio.Future[Token]) -> None:
    if not future.cancelled():
        future.exception()
