"""Proxy authentication (407) for listeners others can reach: USER:PASS or @htpasswd-file.

Compared in constant time; bcrypt checks run off the event loop; repeated failures from one
address are refused without checking; a 407 never says why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import bcrypt
from mitmproxy import connection, ctx, exceptions, http

# At most this many failed attempts per client address in FAILURE_WINDOW seconds; beyond it every
# attempt gets 407 without its password being looked at (no online guessing, no bcrypt CPU burn).
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0
# Addresses tracked for rate limiting, and verified credentials remembered (as keyed digests):
# both bounded so a flood of new addresses or passwords cannot grow memory.
MAX_TRACKED = 10_000
MAX_VERIFIED = 256
# A bcrypt hash with nothing behind it: unknown users cost as much time as known ones.
_DUMMY_BCRYPT = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=4))


class Credential(NamedTuple):
    user: str
    password: str


class Checker(NamedTuple):
    check: Callable[[str, str], bool]
    slow: bool  # bcrypt: run in a worker thread, never on the event loop


def _check_htpasswd_entry(pwhash: str, password: str) -> bool:
    if pwhash.startswith("{SHA}"):
        digest = base64.b64encode(hashlib.sha1(password.encode("utf-8")).digest()).decode()
        return hmac.compare_digest(pwhash[5:].encode(), digest.encode())
    try:
        return bcrypt.checkpw(password.encode("utf-8"), pwhash.encode())
    except ValueError:
        return False


def parse_htpasswd(text: str) -> dict[str, str]:
    """``user:hash`` lines (bcrypt ``$2y$``/``$2b$``/``$2a$`` or ``{SHA}``); ``#`` comments.

    Raises:
        ValueError: on a malformed line or an unsupported hash (e.g. MD5 ``$apr1$``, crypt).
    """
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, pwhash = line.partition(":")
        if not sep or not user or not pwhash:
            raise ValueError(f"line {number} is not USER:HASH")
        if not pwhash.startswith(("{SHA}", "$2y$", "$2b$", "$2a$")):
            raise ValueError(f"line {number} (user {user!r}) uses an unsupported hash; use bcrypt (htpasswd -B)")
        users[user] = pwhash
    if not users:
        raise ValueError("it has no users")
    return users


def parse_proxy_auth(spec: str) -> Checker:
    """A checker for ``USER:PASS`` or ``@path/to/htpasswd``.

    Raises:
        ValueError: for a malformed spec or an unreadable htpasswd file.
    """
    if spec.startswith("@"):
        path = Path(spec[1:]).expanduser()
        try:
            users = parse_htpasswd(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read proxy auth file {path}: {getattr(e, 'strerror', None) or e}") from None
        except ValueError as e:
            raise ValueError(f"proxy auth file {path}: {e}") from None

        def check_file(u: str, p: str) -> bool:
            pwhash = users.get(u)
            if pwhash is None:
                bcrypt.checkpw(p.encode("utf-8"), _DUMMY_BCRYPT)  # same cost as a real user
                return False
            return _check_htpasswd_entry(pwhash, p)

        return Checker(check_file, slow=any(h.startswith("$2") for h in users.values()))
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError("proxy auth must be USER:PASS (both non-empty) or @htpasswd-file")
    expected = Credential(user, password)

    def check(u: str, p: str) -> bool:
        ok_user = hmac.compare_digest(u.encode(), expected.user.encode())
        ok_pass = hmac.compare_digest(p.encode(), expected.password.encode())
        return ok_user & ok_pass

    return Checker(check, slow=False)


def parse_basic(value: str) -> Credential | None:
    """``Basic base64(user:pass)`` -> Credential; None for anything else."""
    scheme, _, encoded = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return Credential(user, password) if sep else None


def auth_required() -> http.Response:
    """The one 407 we send: no hint whether the user, the password or the rate limit was the problem."""
    return http.Response.make(
        407, b"Proxy authentication required.\n",
        {"proxy-authenticate": 'Basic realm="gcp-auth-proxy"', "content-type": "text/plain"},
    )


class FailureLimiter:
    """Sliding-window count of failed attempts per address, bounded in the number of addresses."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_failures: int = MAX_FAILURES,
                 window: float = FAILURE_WINDOW, max_tracked: int = MAX_TRACKED) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def limited(self, address: str) -> bool:
        times = self._failures.get(address)
        if not times:
            return False
        cutoff = self._clock() - self.window
        while times and times[0] < cutoff:
            times.popleft()
        if not times:
            del self._failures[address]
            return False
        return len(times) >= self.max_failures

    def record(self, address: str) -> None:
        times = self._failures.get(address)
        if times is None:
            times = self._failures[address] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)
        self._failures.move_to_end(address)
        times.append(self._clock())

    def __len__(self) -> int:
        return len(self._failures)


class ProxyAuth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.checker: Checker | None = None
        self.authenticated: MutableMapping[connection.Client, bool] = weakref.WeakKeyDictionary()
        self.limiter = FailureLimiter(clock)
        # Keyed digests of credentials that passed, so a bcrypt file costs one check per client,
        # not one per request. The key lives only in this process.
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()

    def load(self, loader: Any) -> None:
        loader.add_option(
            "proxy_auth", str, "",
            "Require proxy authentication: USER:PASS or @htpasswd-file (bcrypt or {SHA} entries). Empty: off.",
        )

    def configure(self, updated: set[str]) -> None:
        if "proxy_auth" in updated:
            spec = ctx.options.proxy_auth
            try:
                self.checker = parse_proxy_auth(spec) if spec else None
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            self._verified.clear()

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.checker is None or flow.response or flow.error:
            return
        if await self._authenticate(flow):
            self.authenticated[flow.client_conn] = True

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if self.checker is None or flow.response or flow.error:
            return
        if flow.client_conn in self.authenticated:  # requests inside an authenticated CONNECT tunnel
            return
        await self._authenticate(flow)

    async def _authenticate(self, flow: http.HTTPFlow) -> bool:
        assert self.checker is not None
        address = flow.client_conn.peername[0] if flow.client_conn.peername else "?"
        value = flow.request.headers.get("proxy-authorization", "")
        flow.request.headers.pop("proxy-authorization", None)  # never forwarded upstream
        credential = parse_basic(value) if value else None
        ok = False
        if credential is not None and not self.limiter.limited(address):
            ok = await self._verify(credential)
        if ok:
            return True
        if value:
            self.limiter.record(address)
        flow.metadata.setdefault("gauth", {})["auth"] = "denied"
        flow.response = auth_required()
        return False

    async def _verify(self, credential: Credential) -> bool:
        assert self.checker is not None
        digest = hmac.new(self._key, f"{credential.user}\0{credential.password}".encode(), "sha256").digest()
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        if self.checker.slow:
            ok = await asyncio.to_thread(self.checker.check, credential.user, credential.password)
        else:
            ok = self.checker.check(credential.user, credential.password)
        if ok:
            self._verified[digest] = None
            while len(self._verified) > MAX_VERIFIED:
                self._verified.popitem(last=False)
        return ok


addons = [ProxyAuth()]
