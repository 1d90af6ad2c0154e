"""A cache of one Google access token: fetched once, refreshed ahead of expiry, single-flight.

No mitmproxy import: the addon calls it from a worker thread, tests call it directly with a fake
credential and a fake clock. The token never appears in a log line or an exception message.
"""

from __future__ import annotations

import datetime
import functools
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from google.auth import exceptions as gexc

from addons import redact

# Naming what was loaded lives with the loading, in addons/credentials.py; still importable here.
from addons.credentials import credential_type, principal  # noqa: F401

logger = logging.getLogger(__name__)

# The metadata server hands out a token until it has ~5 minutes left; refresh like it does.
REFRESH_MARGIN = 300.0
# Stop serving a token this long before its stated expiry (clock skew, time in flight).
EXPIRY_SKEW = 10.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 60.0
# Ceiling on fetch rate: never more than one fetch per this many seconds (metadata rate limits).
MIN_FETCH_INTERVAL = 1.0


class Credentials(Protocol):
    token: str | None
    expiry: datetime.datetime | None

    def refresh(self, request: Any) -> None: ...
    def apply(self, headers: dict[str, str], token: str | None = None) -> None: ...


CredentialsLoader = Callable[[], Credentials]


@dataclass(frozen=True)
class Token:
    value: str
    headers: dict[str, str]  # authorization plus x-goog-user-project when the ADC has one
    expires_at: float | None  # wall-clock epoch seconds, None when unknown
    fetched_at: float
    refresh_at: float | None

    @functools.cached_property  # hashed once per token, not once per request
    def fingerprint(self) -> str:
        return redact.fingerprint(self.value)

    def __repr__(self) -> str:  # never print the token itself
        return f"Token({self.fingerprint}, expires_at={self.expires_at})"


class TokenError(Exception):
    """No token could be obtained. ``str()`` is safe to show to clients; ``reason`` is a short code.

    ``cause_type`` and ``cause_message`` (redacted) describe the google-auth exception behind it,
    when there was one; the exception itself is not kept.
    """

    def __init__(
        self, message: str, reason: str, *, cause_type: str | None = None, cause_message: str | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.cause_type = cause_type
        self.cause_message = cause_message


@dataclass(frozen=True)
class Failure:
    """The last failed fetch, kept as data rather than as the exception object.

    A stored exception re-raised for every request in the backoff window gains two traceback
    entries per raise and keeps each caller's frame (and its flow) alive; ``error()`` makes a new
    one instead. ``message`` is already redacted; the original exception is not kept.
    """

    message: str
    reason: str
    cause_type: str | None = None
    cause_message: str | None = None

    def error(self) -> TokenError:
        return TokenError(self.message, self.reason, cause_type=self.cause_type, cause_message=self.cause_message)


class TokenCache:
    def __init__(
        self,
        load_credentials: CredentialsLoader,
        request: Any,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        refresh_margin: float = REFRESH_MARGIN,
        backoff_base: float = BACKOFF_BASE,
        backoff_max: float = BACKOFF_MAX,
        min_fetch_interval: float = MIN_FETCH_INTERVAL,
    ) -> None:
        self._load_credentials = load_credentials
        self._request = request
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._refresh_margin = refresh_margin
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._min_fetch_interval = min_fetch_interval

        self._lock = threading.Lock()
        self._credentials: Credentials | None = None
        self._token: Token | None = None
        self._failure: Failure | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_fetch_at: float | None = None
        self.fetches = 0
        self.fetch_failures = 0
        self.on_change: Callable[[str], None] | None = None  # called with a one-line state message

    # -- non-blocking reads -------------------------------------------------------------------

    def current(self) -> Token | None:
        """The cached token if it is still usable, without blocking."""
        token = self._token
        if token is None:
            return None
        if token.expires_at is not None and self._clock() >= token.expires_at - EXPIRY_SKEW:
            return None
        return token

    def refresh_due(self) -> bool:
        """True when a (background) refresh should start: no token, or inside the refresh margin."""
        token = self.current()
        if token is None:
            return True
        return token.refresh_at is not None and self._clock() >= token.refresh_at

    def in_backoff(self) -> bool:
        return self._failure is not None and self._clock() < self._retry_at

    def retry_in(self) -> float:
        """Seconds until the next fetch may be tried (0 when not backing off)."""
        return max(0.0, self._retry_at - self._clock()) if self._failure is not None else 0.0

    def failure(self) -> TokenError:
        """A new TokenError describing the last failed fetch, to raise in the caller's own frame.

        When no failure is on record (another thread may have just refreshed), the error says
        no token is available rather than returning None, so ``raise cache.failure()`` is safe.
        """
        failure = self._failure  # read once: a concurrent success may clear it
        if failure is None:
            return TokenError("No access token is available yet.", "token_unavailable")
        return failure.error()

    @property
    def last_error(self) -> TokenError | None:
        """Deprecated: use ``failure()``. A new TokenError for the last failure, or None."""
        failure = self._failure
        return None if failure is None else failure.error()

    @property
    def credentials(self) -> Credentials | None:
        return self._credentials

    # -- blocking work (call from a worker thread) ------------------------------------------------

    def get(self) -> Token:
        """A usable token, fetching one if needed. Raises TokenError when none can be had."""
        token = self.current()
        if token is not None and not self.refresh_due():
            return token
        return self.refresh()

    def refresh(self) -> Token:
        """Fetch a new token unless another caller just did (single-flight)."""
        with self._lock:
            token = self.current()
            if token is not None and not self.refresh_due():
                return token  # someone else refreshed while we waited for the lock
            if self.in_backoff():
                if token is not None:
                    return token  # keep serving the still-valid token
                raise self.failure()
            self._respect_rate_ceiling()
            try:
                new = self._fetch()
            except TokenError as e:
                self._record_failure(Failure(str(e), e.reason, e.cause_type, e.cause_message))
                if token is not None:
                    return token
                raise  # this call's own exception; only the Failure data outlives it
            self._record_success(new)
            return new

    def invalidate(self, value: str) -> None:
        """Forget ``value`` (upstream said 401 to it); a no-op when the cache already moved on."""
        with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None
                self._failure = None
                self._retry_at = 0.0

    # -- internals ----------------------------------------------------------------------------------

    def _respect_rate_ceiling(self) -> None:
        if self._last_fetch_at is None:
            return
        wait = self._last_fetch_at + self._min_fetch_interval - self._clock()
        if wait > 0:
            self._sleep(wait)

    def _fetch(self) -> Token:
        self._last_fetch_at = self._clock()
        try:
            if self._credentials is None:
                self._credentials = self._load_credentials()
            creds = self._credentials
            creds.refresh(self._request)
            value = creds.token
            if not value:
                raise TokenError("The credentials returned no access token.", "no_token")
            headers: dict[str, str] = {}
            creds.apply(headers)
        except TokenError:
            raise
        except gexc.DefaultCredentialsError as e:
            self._credentials = None  # look for credentials again next time
            raise describe_error(e) from None
        except Exception as e:  # noqa: BLE001 - google-auth raises many types; all become one TokenError
            raise describe_error(e) from None
        now = self._clock()
        expires_at = _epoch(creds.expiry)
        refresh_at = None
        if expires_at is not None:
            lifetime = max(0.0, expires_at - now)
            refresh_at = expires_at - min(self._refresh_margin, lifetime / 2)
        headers = {k.lower(): v for k, v in headers.items()}
        return Token(value, headers, expires_at, now, refresh_at)

    def _record_success(self, token: Token) -> None:
        recovered = self._failure is not None
        first = self._token is None and self.fetches == 0
        self._token = token
        self._failure = None
        self._failures = 0
        self._retry_at = 0.0
        self.fetches += 1
        if first or recovered:
            self._notify("token available" + (" again" if recovered else ""))

    def _record_failure(self, failure: Failure) -> None:
        changed = self._failure is None or self._failure.message != failure.message
        self._failure = failure
        self._failures += 1
        self.fetch_failures += 1
        delay = min(self._backoff_max, self._backoff_base * 2 ** (self._failures - 1))
        delay *= 0.5 + self._jitter() / 2  # "equal jitter": spread retries, keep a floor
        # The token source's own Retry-After (seen by the transport) wins over a shorter backoff.
        retry_after = getattr(self._request, "retry_after", None)
        if callable(retry_after):
            delay = max(delay, float(retry_after()))
        self._retry_at = self._clock() + delay
        if changed:
            self._notify(f"token unavailable: {failure.message}")

    def _notify(self, message: str) -> None:
        if self.on_change is not None:
            self.on_change(message)


def _epoch(expiry: datetime.datetime | None) -> float | None:
    """google-auth's expiry is a naive UTC datetime."""
    if expiry is None:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return expiry.timestamp()


def describe_error(error: BaseException) -> TokenError:
    """Turn a google-auth failure into one actionable sentence without secrets."""
    detail = redact.redact_text(" ".join(str(a) for a in getattr(error, "args", ()) if a))[:300]
    message, reason = _classify(error, detail)
    return TokenError(message, reason, cause_type=type(error).__name__, cause_message=detail)


def _classify(error: BaseException, detail: str) -> tuple[str, str]:
    """(message, reason) for a google-auth failure whose redacted text is ``detail``."""
    text = detail.lower()
    if isinstance(error, gexc.DefaultCredentialsError):
        if "not found" in text or "could not automatically determine" in text:
            if "file" in text and "was not found" in text:
                return (
                    f"The credentials file named by GOOGLE_APPLICATION_CREDENTIALS does not exist ({detail}).",
                    "credentials_file_missing",
                )
            return (
                ("No Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS to a key file, run "
                 "'gcloud auth application-default login', or run on a VM with a service account."),
                "no_credentials",
            )
        return f"The credentials file could not be used: {detail}", "credentials_file_invalid"
    if isinstance(error, OSError):
        return f"The credentials file could not be read: {detail}", "credentials_file_unreadable"
    if isinstance(error, gexc.GoogleAuthError) and "rate limited" in text:
        return f"The token source is rate limiting gcp-auth-proxy: {detail}", "token_rate_limited"
    if isinstance(error, gexc.RefreshError):
        if "invalid_grant" in text:
            return (
                ("The token endpoint rejected the credentials (invalid_grant): the key or refresh token "
                 "may be deleted, revoked or expired; create a new key or run "
                 "'gcloud auth application-default login' again."),
                "invalid_grant",
            )
        if "metadata" in text or "compute engine" in text:
            return f"The GCE metadata server did not give a token: {detail}", "metadata_failed"
        return f"The token endpoint refused to give a token: {detail}", "token_endpoint_failed"
    if isinstance(error, gexc.TransportError):
        if "metadata" in text or "169.254.169.254" in text:
            return f"The GCE metadata server could not be reached: {detail}", "metadata_unreachable"
        return f"The token endpoint could not be reached: {detail}", "token_endpoint_unreachable"
    return f"Getting a token failed ({type(error).__name__}): {detail}", "token_failed"
