"""The HTTP transport for the proxy's own token fetches: no env proxies, our resolve rules, our CAs.

With ``--upstream-proxy`` each connection (STS, IAM Credentials and every other token endpoint)
is a CONNECT tunnel through it, to the address ``--resolve`` picks (else the name), with TLS to
the name inside; plain ``http://`` token sources are tunnelled the same way. The GCE metadata
server and ``--upstream-proxy-bypass`` names are reached directly (``Routing.via``). Not
requests' own ``proxies=``: urllib3 would forward ``http://`` requests in clear and always ask the
proxy for the name, never for our address.
"""

from __future__ import annotations

import email.utils
import socket
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
from addons.upstream_proxy import (
    MAX_CONNECT_RESPONSE,
    ProxySpec,
    Routing,
    UpstreamProxyError,
    check_connect_response,
    connect_bytes,
    format_authority,
    head_end,
    not_http,
    split_head,
)

DEFAULT_TIMEOUT = 10.0
DIRECT = Routing()  # no upstream proxy
# A Retry-After beyond this is not believed: a confused token source must not stop us for hours.
RETRY_AFTER_MAX = 300.0


def open_tunnel(proxy: ProxySpec, target: tuple[str, int], timeout: float | None,
                dial: tuple[str, int] | None = None, **create: Any) -> socket.socket:
    """A socket through which ``target`` is reached: connected to ``proxy``, CONNECT answered 2xx.

    ``dial``: where to connect for the proxy itself (a ``--resolve`` rule for its name), if not its address.

    Raises:
        UpstreamProxyError: its message names the proxy (never its credentials).
    """
    try:
        sock = urllib3_connection.create_connection(dial or proxy.address, timeout, **create)
    except OSError as e:
        raise UpstreamProxyError(f"the upstream proxy {proxy} could not be reached: {e}",
                                 timeout=isinstance(e, TimeoutError)) from None
    try:
        sock.sendall(connect_bytes(target, proxy))
        check_connect_response(_read_head(sock, proxy, target), proxy, target)
    except TimeoutError:
        sock.close()
        raise UpstreamProxyError(f"the upstream proxy {proxy} timed out: no answer to CONNECT to "
                                 f"{format_authority(*target)} within {timeout or 0:g} s", timeout=True) from None
    except OSError as e:
        sock.close()
        raise UpstreamProxyError(f"the upstream proxy {proxy} failed during CONNECT: {e}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _read_head(sock: socket.socket, proxy: ProxySpec, target: tuple[str, int]) -> list[bytes]:
    """The lines of the answer to CONNECT; not a byte more is taken from the socket."""
    buf = bytearray()
    while True:
        peeked = sock.recv(4096, socket.MSG_PEEK)
        if not peeked:
            raise UpstreamProxyError(f"the upstream proxy {proxy} closed the connection before answering "
                                     f"CONNECT to {format_authority(*target)}")
        end = head_end(buf + peeked)
        if end is not None:
            while len(buf) < end:
                buf += sock.recv(end - len(buf))
            head, _ = split_head(buf)
            assert head is not None
            return head
        buf += sock.recv(len(peeked))
        if not_http(buf) or len(buf) > MAX_CONNECT_RESPONSE:
            raise UpstreamProxyError(f"the upstream proxy {proxy} answered CONNECT to {format_authority(*target)} "
                                     "with something that is not HTTP")


def upstream_failure(error: BaseException) -> UpstreamProxyError | None:
    """The upstream proxy's refusal somewhere inside a requests/urllib3 error, if it is one."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, UpstreamProxyError):
            return e
        linked = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        todo += [x for x in linked if isinstance(x, BaseException)]
    return None


def _resolving_connection[C: HTTPConnection](base: type[C], rules: Sequence[ResolveRule],
                                              routing: Routing = DIRECT) -> type[C]:
    class ResolvingConnection(base):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> Any:
            target = resolve(rules, self.host, self.port)
            proxy = routing.via(self.host)
            if proxy is not None:
                try:
                    return open_tunnel(proxy, target or (self.host, self.port), self.timeout,
                                       dial=resolve(rules, proxy.host, proxy.port),  # as for proxied traffic
                                       source_address=self.source_address, socket_options=self.socket_options)
                except UpstreamProxyError as e:
                    if e.timeout:
                        raise ConnectTimeoutError(self, str(e)) from e
                    raise NewConnectionError(self, str(e)) from e
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
    def __init__(self, rules: Sequence[ResolveRule], routing: Routing = DIRECT) -> None:
        self._rules = list(rules)
        self._routing = routing
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        rules, routing = self._rules, self._routing

        class Pool(HTTPConnectionPool):
            ConnectionCls = _resolving_connection(HTTPConnection, rules, routing)

        class TlsPool(HTTPSConnectionPool):
            ConnectionCls = _resolving_connection(HTTPSConnection, rules, routing)

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}


def make_session(rules: Sequence[ResolveRule], ca_bundle: str | None,
                 routing: Routing = DIRECT) -> requests.Session:
    """A requests session that ignores HTTPS_PROXY (it would loop into ourselves) and REQUESTS_CA_BUNDLE,
    and connects as ``rules`` and ``routing`` say."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {}
    if ca_bundle:
        session.verify = ca_bundle
    if rules or routing.proxy is not None:
        adapter = _ResolvingAdapter(rules, routing)
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
        try:
            response = super().__call__(url, method=method, body=body, headers=headers, timeout=timeout, **kwargs)
        except gexc.TransportError as e:
            upstream = upstream_failure(e)
            if upstream is None:
                raise
            # One sentence naming the upstream proxy, not urllib3's pool and retry wrappers around it.
            raise gexc.TransportError(str(upstream)) from e
        if response.status in (429, 503):
            seconds = parse_retry_after(response.headers.get("retry-after"))
            if seconds is not None:
                self._not_before = self._clock() + seconds
                raise RetryAfter(seconds)
        return response


def make_request(rules: Sequence[ResolveRule], ca_bundle: str | None,
                 timeout: float = DEFAULT_TIMEOUT, *, routing: Routing = DIRECT) -> TimedRequest:
    return TimedRequest(make_session(rules, ca_bundle, routing), timeout)

