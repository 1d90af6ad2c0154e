"""Proxy authentication (407) for listeners others can reach: USER:PASS or @htpasswd-file.

Compared in constant time; repeated failures from one address are refused without checking.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import weakref
from collections import defaultdict, deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.utils import htpasswd

MAX_FAILURES = 10
FAILURE_WINDOW = 60.0


class Credential(NamedTuple):
    user: str
    password: str


def parse_proxy_auth(spec: str) -> Callable[[str, str], bool]:
    """A checker for ``USER:PASS`` or ``@path/to/htpasswd``.

    Raises:
        ValueError: for a malformed spec or an unreadable htpasswd file.
    """
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            store = htpasswd.HtpasswdFile.from_file(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read proxy auth file {path}: {e}") from e
        return store.check_password
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError("proxy auth must be USER:PASS (both non-empty) or @htpasswd-file")
    expected = Credential(user, password)

    def check(u: str, p: str) -> bool:
        ok_user = hmac.compare_digest(u.encode(), expected.user.encode())
        ok_pass = hmac.compare_digest(p.encode(), expected.password.encode())
        return ok_user & ok_pass

    return check


def parse_basic(value: str) -> Credential | None:
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return Credential(user, password) if sep else None


def auth_required() -> http.Response:
    return http.Response.make(
        407, b"Proxy authentication required.\n",
        {"proxy-authenticate": 'Basic realm="gcp-auth-proxy"', "content-type": "text/plain"},
    )


class ProxyAuth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.check: Callable[[str, str], bool] | None = None
        self.authenticated: MutableMapping[connection.Client, bool] = weakref.WeakKeyDictionary()
        self.failures: defaultdict[str, deque[float]] = defaultdict(deque)
        self._clock = clock

    def load(self, loader: Any) -> None:
        loader.add_option(
            "proxy_auth", str, "",
            "Require proxy authentication: USER:PASS or @htpasswd-file (bcrypt/SHA entries). Empty: off.",
        )

    def configure(self, updated: set[str]) -> None:
        if "proxy_auth" in updated:
            spec = ctx.options.proxy_auth
            try:
                self.check = parse_proxy_auth(spec) if spec else None
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.check and self._authenticate(flow):
            self.authenticated[flow.client_conn] = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.check is None or flow.response or flow.client_conn in self.authenticated:
            return
        self._authenticate(flow)

    def _authenticate(self, flow: http.HTTPFlow) -> bool:
        assert self.check is not None
        address = flow.client_conn.peername[0] if flow.client_conn.peername else "?"
        value = flow.request.headers.get("proxy-authorization", "")
        credential = parse_basic(value)
        ok = (
            not self._rate_limited(address)
            and credential is not None
            and self.check(credential.user, credential.password)
        )
        flow.request.headers.pop("proxy-authorization", None)
        if ok:
            return True
        if value:
            self._record_failure(address)
        flow.metadata.setdefault("gauth", {})["auth"] = "denied"
        flow.response = auth_required()
        return False

    def _rate_limited(self, address: str) -> bool:
        window = self.failures.get(address)
        if not window:
            return False
        cutoff = self._clock() - FAILURE_WINDOW
        while window and window[0] < cutoff:
            window.popleft()
        if not window:
            del self.failures[address]
        return len(window) >= MAX_FAILURES

    def _record_failure(self, address: str) -> None:
        self.failures[address].append(self._clock())


addons = [ProxyAuth()]
