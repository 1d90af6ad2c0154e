"""Proxy authentication (407) for listeners others can reach: USER:PASS or @htpasswd-file.

Compared in constant time; bcrypt checks run off the event loop; a 407 never says why. The
``Proxy-Authorization`` header is removed from every request, whether proxy auth is on or off,
inside CONNECT tunnels too: the proxy's password is never forwarded upstream.

Online guessing is limited by the *supplied user name*, never by the client address (any local
process can pick any address in 127.0.0.0/8, and everyone on 127.0.0.1 would share one lock):

- A user name with ``MAX_USER_FAILURES`` failed attempts in the last ``FAILURE_WINDOW`` seconds
  gets the bare 407 without its password being looked at, even a correct or already verified
  one, until its failures age out. Unknown names are counted exactly like known ones, so the
  lock reveals nothing about which names exist. One user's typos never lock out another name;
  whoever knows a name can lock that name out for a window (its open tunnels keep working):
  the price of capping guesses per password.
- A global budget: after ``MAX_TOTAL_FAILURES`` failed password checks in the window (over all
  names: spraying one password over many names, or burning bcrypt CPU), unverified attempts get
  407 without a check. Credentials verified earlier (kept as keyed digests, ``MAX_VERIFIED``)
  still pass, so a flood of bad guesses cannot lock out a user who already authenticated. A miss
  in that cache while the budget is spent is still a guess against the name (a hit would have
  said "right"), so it counts against the name, not against the global budget (which counts
  password checks: refused attempts do not prolong the flood for new users).
- Attempts without parseable Basic credentials are refused and not counted: nothing was checked.

Memory is bounded: names are kept as keyed digests, each with at most ``MAX_USER_FAILURES`` time
stamps, and forgotten once their failures age out. Failed checks are capped by the global budget,
so the table only fills during a flood of cache misses under fresh names; a full table never
evicts a live entry (that would hand a name fresh guesses): new names are then refused unchecked,
except names holding a verified credential, which are always counted.
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
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, NamedTuple

import bcrypt
from mitmproxy import connection, ctx, exceptions, http

from addons import options

MAX_USER_FAILURES = 10  # per supplied user name per window
MAX_TOTAL_FAILURES = 100  # failed password checks per window, all names together
FAILURE_WINDOW = 60.0
# User names tracked for the limit, and verified credentials remembered (as keyed digests):
# both bounded so a flood of new names or passwords cannot grow memory.
MAX_TRACKED = 10_000
MAX_VERIFIED = 256
# A bcrypt hash with nothing behind it: unknown users cost as much time as known ones.
_DUMMY_BCRYPT = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=4))


# Where a flow keeps the --proxy-auth user it came from (outside "gauth": its presence means
# "audit this", and an authenticated request to a host we do not inject for is not audited).
PROXY_USER_KEY = "gauth_proxy_user"


class Credential(NamedTuple):
    user: str
    password: str


class Checker(NamedTuple):
    check: Callable[[str, str], bool]
    slow: bool  # bcrypt: run in a worker thread, never on the event loop
    users: frozenset[str] = frozenset()  # the names routes and rules may refer to


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

        return Checker(check_file, slow=any(h.startswith("$2") for h in users.values()), users=frozenset(users))
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError("proxy auth must be USER:PASS (both non-empty) or @htpasswd-file")
    expected = Credential(user, password)

    def check(u: str, p: str) -> bool:
        ok_user = hmac.compare_digest(u.encode(), expected.user.encode())
        ok_pass = hmac.compare_digest(p.encode(), expected.password.encode())
        return ok_user & ok_pass

    return Checker(check, slow=False, users=frozenset({user}))


def known_proxy_users(spec: str) -> frozenset[str] | None:
    """The user names ``--proxy-auth`` admits (None when proxy auth is off).

    Raises:
        ValueError: as ``parse_proxy_auth``.
    """
    return parse_proxy_auth(spec).users if spec else None


def proxy_user_of(flow: http.HTTPFlow) -> str | None:
    """The ``--proxy-auth`` user this request came from (never the password), or None."""
    user: str | None = flow.metadata.get(PROXY_USER_KEY)
    return user


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
    """Failed attempts in a sliding window: per user name (a digest) and in total.

    Checks still running count as failures until they end: otherwise a burst of concurrent
    guesses would all pass :meth:`locked` before the first one failed. Pure bookkeeping with an
    injectable clock; :class:`ProxyAuth` decides what counts.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_failures: int = MAX_USER_FAILURES,
                 max_total: int = MAX_TOTAL_FAILURES, window: float = FAILURE_WINDOW,
                 max_tracked: int = MAX_TRACKED) -> None:
        self._clock = clock
        self.max_failures = max_failures
        self.max_total = max_total
        self.window = window
        self.max_tracked = max_tracked
        # Least recently failed first, so aged-out names are dropped from the front.
        self._names: OrderedDict[bytes, deque[float]] = OrderedDict()
        self._total: deque[float] = deque(maxlen=max_total)
        self._pending: Counter[bytes] = Counter()

    def _expire(self) -> float:
        cutoff = self._clock() - self.window
        while self._names:
            name, times = next(iter(self._names.items()))
            if times[-1] >= cutoff:
                break
            del self._names[name]
        while self._total and self._total[0] < cutoff:
            self._total.popleft()
        return cutoff

    def locked(self, name: bytes, *, reserved: bool = False) -> bool:
        """True when attempts for ``name`` must be refused without looking at the password.

        That is when the name used up its failures, or when it is new while the table is full
        (evicting a live name would give it fresh guesses). ``reserved`` names (holding a
        verified credential) always find room, so a full table cannot lock them out.
        """
        cutoff = self._expire()
        times = self._names.get(name)
        if times is None and not reserved and len(self._names) >= self.max_tracked:
            return True
        failures = sum(1 for t in times if t >= cutoff) if times else 0
        return failures + self._pending[name] >= self.max_failures

    def budget_spent(self) -> bool:
        """True while the global budget of failed (or running) password checks is used up."""
        self._expire()
        return len(self._total) + self._pending.total() >= self.max_total

    def record(self, name: bytes, *, checked: bool = True) -> None:
        """Count one failure for ``name``; ``checked`` (a password check failed) also spends the budget.

        Call only after :meth:`locked` said no: that is what keeps the table bounded.
        """
        now = self._clock()
        times = self._names.get(name)
        if times is None:
            times = self._names[name] = deque(maxlen=self.max_failures)
        self._names.move_to_end(name)
        times.append(now)
        if checked:
            self._total.append(now)

    def begin_check(self, name: bytes) -> None:
        """A password check for ``name`` starts: it counts as a failure until :meth:`end_check`."""
        self._pending[name] += 1

    def end_check(self, name: bytes, *, failed: bool) -> None:
        self._pending[name] -= 1
        if self._pending[name] <= 0:
            del self._pending[name]
        if failed:
            self.record(name)

    def __len__(self) -> int:
        self._expire()
        return len(self._names)


def _take_proxy_authorization(request: http.Request) -> str:
    """Remove every ``Proxy-Authorization`` field; their value, folded with ", " ("" when absent)."""
    value: str = request.headers.pop("proxy-authorization", "")
    return value


class ProxyAuth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.checker: Checker | None = None
        # client connection -> the user name its CONNECT authenticated as
        self.authenticated: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()
        self.limiter = FailureLimiter(clock)
        # Keyed digests of credentials that passed (-> digest of their user name), so a bcrypt
        # file costs one check per client, not one per request; names and passwords are never
        # kept in the clear. The key lives only in this process.
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, bytes] = OrderedDict()
        self._verified_names: Counter[bytes] = Counter()

    def load(self, loader: Any) -> None:
        options.declare(loader, "proxy_auth")

    def configure(self, updated: set[str]) -> None:
        if "proxy_auth" in updated:
            spec = ctx.options.proxy_auth
            try:
                self.checker = parse_proxy_auth(spec) if spec else None
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            self._verified.clear()
            self._verified_names.clear()

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        value = _take_proxy_authorization(flow.request)
        if self.checker is None or flow.response or flow.error:
            return
        user = await self._authenticate(flow, value)
        if user is not None:
            self.authenticated[flow.client_conn] = user

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        # Stripped before anything else: with auth off, inside an authenticated tunnel, on a
        # request another addon already answered, the proxy's credentials never go upstream.
        value = _take_proxy_authorization(flow.request)
        if self.checker is None or flow.response or flow.error:
            return
        user = self.authenticated.get(flow.client_conn)  # inside an authenticated CONNECT tunnel
        if user is not None:
            flow.metadata[PROXY_USER_KEY] = user
            return
        await self._authenticate(flow, value)

    async def _authenticate(self, flow: http.HTTPFlow, value: str) -> str | None:
        """The admitted user's name (also recorded on the flow), or None after answering 407."""
        credential = parse_basic(value) if value else None
        if credential is not None and await self._admit(credential):
            flow.metadata[PROXY_USER_KEY] = credential.user
            return credential.user
        flow.metadata.setdefault("gauth", {})["auth"] = "denied"
        flow.response = auth_required()
        return None

    async def _admit(self, credential: Credential) -> bool:
        """The limits of the module docstring, in order; True when the credential may pass."""
        assert self.checker is not None
        name = self._digest(b"user", credential.user)
        if self.limiter.locked(name, reserved=name in self._verified_names):
            return False
        digest = self._digest(b"credential", credential.user, credential.password)
        if digest in self._verified:
            self._verified.move_to_end(digest)
            return True
        if self.limiter.budget_spent():
            self.limiter.record(name, checked=False)
            return False
        ok = False
        self.limiter.begin_check(name)
        try:
            if self.checker.slow:
                ok = await asyncio.to_thread(self.checker.check, credential.user, credential.password)
            else:
                ok = self.checker.check(credential.user, credential.password)
        finally:  # a check cut short still counts: its bcrypt work runs on in the worker thread
            self.limiter.end_check(name, failed=not ok)
        if ok:
            self._remember(digest, name)
        return ok

    def _digest(self, kind: bytes, *parts: str) -> bytes:
        """A keyed digest of length-prefixed parts (a user name may itself contain any byte)."""
        mac = hmac.new(self._key, kind, "sha256")
        for part in parts:
            data = part.encode()
            mac.update(len(data).to_bytes(4, "big") + data)
        return mac.digest()

    def _remember(self, digest: bytes, name: bytes) -> None:
        if digest in self._verified:  # two checks of the same credential ran at once
            self._verified.move_to_end(digest)
            return
        self._verified[digest] = name
        self._verified_names[name] += 1
        while len(self._verified) > MAX_VERIFIED:
            _old, old_name = self._verified.popitem(last=False)
            self._verified_names[old_name] -= 1
            if self._verified_names[old_name] <= 0:
                del self._verified_names[old_name]


addons = [ProxyAuth()]
