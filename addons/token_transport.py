"""The HTTP transport for the proxy's own token fetches: no env proxies, our resolve rules, our CAs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import google.auth.transport.requests
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util import connection as urllib3_connection

from addons.resolve import ResolveRule, resolve

DEFAULT_TIMEOUT = 10.0


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


class TimedRequest(google.auth.transport.requests.Request):
    """google-auth's Request with a ceiling on every timeout: a hung token endpoint must not hang us."""

    def __init__(self, session: requests.Session, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(session)
        self._ceiling = timeout

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        timeout = self._ceiling if timeout is None else min(timeout, self._ceiling)
        return super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)


def make_request(rules: Sequence[ResolveRule], ca_bundle: str | None,
                 timeout: float = DEFAULT_TIMEOUT) -> TimedRequest:
    return TimedRequest(make_session(rules, ca_bundle), timeout)

