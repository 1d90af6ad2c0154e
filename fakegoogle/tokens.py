"""Issued access tokens, revocation, counters and the token-failure switch.

Shared by the token endpoints (oauth2, metadata, sts, iamcredentials) and the API auth check,
and mutated from test threads, so every access goes through one lock.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter

FAILURE_MODES = (None, "500", "invalid_grant", "429", "hang")


class TokenStore:
    """Thread-safe registry of bearer tokens this fake has issued."""

    def __init__(self, lifetime: int = 3600) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._expiry: dict[str, float] = {}
        self._kind: dict[str, str] = {}
        self._principal: dict[str, str] = {}
        self._order: list[str] = []
        self._revoked: set[str] = set()
        self.lifetime = lifetime
        self.fetches = 0
        self.requests = 0
        self._requests_to: Counter[str] = Counter()
        self._failure: str | None = None

    # --- counters -------------------------------------------------------
    def count_request(self, endpoint: str = "oauth2") -> None:
        """Count one request to a token endpoint (before any injected failure is applied)."""
        with self._changed:
            self.requests += 1
            self._requests_to[endpoint] += 1
            self._changed.notify_all()

    def requests_to(self, endpoint: str) -> int:
        """Requests so far to one token endpoint: oauth2, oauth2_id_token, metadata,
        metadata_identity, sts_exchange, sts_refresh, generate_access_token, generate_id_token."""
        with self._lock:
            return self._requests_to[endpoint]

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        """Block until ``requests`` reaches ``count`` (a condition, not a sleep); False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.requests >= count, timeout)

    def issue(
        self, kind: str = "oauth2", lifetime: int | None = None, principal: str | None = None
    ) -> tuple[str, int]:
        """Mint an unpredictable token; returns (token, expires_in).

        ``kind`` names the endpoint that issued it (see ``kind_of``); ``lifetime`` may shorten
        the store's lifetime for this one token (generateAccessToken's ``lifetime``);
        ``principal`` is who the token speaks for, which iamcredentials checks grants against.
        """
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            lifetime = self.lifetime if lifetime is None else min(lifetime, self.lifetime)
            self._expiry[token] = time.time() + lifetime
            self._kind[token] = kind
            if principal is not None:
                self._principal[token] = principal
            self._order.append(token)
            self.fetches += 1
        return token, lifetime

    def kind_of(self, token: str) -> str | None:
        """Which endpoint issued ``token`` (oauth2, metadata, sts, sts_refresh, iamcredentials)."""
        with self._lock:
            return self._kind.get(token)

    def principal_of(self, token: str) -> str | None:
        """The email (or federated ``principal://`` name) ``token`` was issued for."""
        with self._lock:
            return self._principal.get(token)

    def is_valid(self, token: str) -> bool:
        with self._lock:
            expiry = self._expiry.get(token)
            return expiry is not None and token not in self._revoked and time.time() < expiry

    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def revoke_all(self) -> None:
        with self._lock:
            self._revoked.update(self._expiry)

    def found_in(self, text: str) -> bool:
        """Whether any token this fake issued (valid or not) appears in ``text``."""
        with self._lock:
            return any(token in text for token in self._order)

    @property
    def issued(self) -> list[str]:
        with self._lock:
            return list(self._order)

    # --- failure injection ---------------------------------------------
    @property
    def failure(self) -> str | None:
        return self._failure  # single attribute read is atomic

    def set_failure(self, mode: str | None) -> None:
        if mode not in FAILURE_MODES:
            raise ValueError(
                f"unknown token failure mode {mode!r}; expected one of {FAILURE_MODES}"
            )
        with self._lock:
            self._failure = mode


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token from an ``Authorization: Bearer X`` header value."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
