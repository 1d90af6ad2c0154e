"""The HTTP transport for the proxy's own token fetches: no env proxies, our resolve rules, our CAs."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Sequence
from typing import Any

import google.auth.transport.requests
import requests
from google.auth import exceptions as gexc
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from addons.resolve import ResolveRule, resolve

DEFAULT_TIMEOUT = 10.0
# A Retry-After beyond this is not believed: a confused token source must not stop us for hours.
RETRY_AFTER_MAX = 300.0


def _resolving_connection[C: HTTPConnection](base: type[C], rules: Sequence[ResolveRule]) -> type[C]:
    class ResolvingConnection(base):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> Any:
            target = resolve(rules, self.host, self.port)
            if target is None:
                return super()._new_conn()
            try:
                return urllib3_connection.create_connection(
                    target,
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as e:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from e
            except OSError as e:
                raise NewConnectionError(self, f"Failed to establish a new connection: {e}") from e

    return ResolvingConnection


class _ResolvingAdapter(HTTPAdapter):
    def __init__(self, rules: Sequence[ResolveRule]) -> None:
        self._rules = list(rules)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        rules = self._rules

        class Pool(HTTPConnectionPool):
            ConnectionCls = _resolving_connection(HTTPConnection, rules)

        class TlsPool(HTTPSConnectionPool):
            ConnectionCls = _resolving_connection(HTTPSConnection, rules)

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}


def make_session(rules: Sequence[ResolveRule], ca_bundle: str | None) -> requests.Session:
    """A requests session that ignores HTTPS_PROXY (it would loop into ourselves) and REQUESTS_CA_BUNDLE."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {}
    if ca_bundle:
        session.verify = ca_bundle
    if rules:
        adapter = _ResolvingAdapter(rules)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session


class RetryAfter(gexc.GoogleAuthError):
    """The token source said "not now" (429/503 with Retry-After); no request is sent until then.

    Not a TransportError on purpose: google-auth's metadata client retries those in a loop.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the token endpoint asked to retry after {seconds:g} s (rate limited)", retryable=True)
        self.seconds = seconds


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After value (delta-seconds or HTTP-date), clamped to [0, RETRY_AFTER_MAX]."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


class TimedRequest(google.auth.transport.requests.Request):
    """google-auth's Request with a ceiling on every timeout (a hung token endpoint must not hang
    us) that honours Retry-After.

    google-auth retries 429s itself after 1, 2, 4 s whatever the server asked; on a 429 or 503 with
    Retry-After we raise instead, and send nothing until that time has passed.
    """

    def __init__(self, session: requests.Session, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(session)
        self._ceiling = timeout
        self._clock = clock
        self._not_before = 0.0

    def retry_after(self) -> float:
        """Seconds until the token source said we may ask again (0 when it said nothing)."""
        return max(0.0, self._not_before - self._clock())

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        wait = self.retry_after()
        if wait > 0:
            raise RetryAfter(round(wait, 1))
        timeout = self._ceiling if timeout is None else min(timeout, self._ceiling)
        response = super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        if response.status in (429, 503):
            seconds = parse_retry_after(response.headers.get("retry-after"))
            if seconds is not None:
                self._not_before = self._clock() + seconds
                raise RetryAfter(seconds)
        return response


def make_request(rules: Sequence[ResolveRule], ca_bundle: str | None,
                 timeout: float = DEFAULT_TIMEOUT) -> TimedRequest:
    return TimedRequest(make_session(rules, ca_bundle), timeout)

