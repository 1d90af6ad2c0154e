"""Routes (who speaks as whom) and rules (what may happen at all), as pure data and pure decisions.

No mitmproxy, no I/O: the proxy, ``policy check`` / ``policy explain`` and the tests all decide
with the same functions. Reading the config file is addons/policy_file.py's job.

Routes pick the credential for a request: the **most specific** matching route wins, compared in
this order (the first difference decides):

1. a route naming ``proxy_users`` beats one for everyone (a user's own route is never overridden
   by a more specific host elsewhere: two users stay two principals everywhere their routes reach);
2. the host pattern: an exact name beats a wildcard, a longer suffix beats a shorter one;
3. the path: a route with ``paths`` beats one without, a longer literal prefix beats a shorter one;
4. the order written: file routes in file order, then the shorthand flags (``--id-token-host``,
   then ``--inject-host``).

Rules decide whether a call may happen: the **first** matching rule wins; when none matches,
``default`` does. A rule that names ``api_methods`` or ``resources`` never matches a call whose
API method the proxy does not recognise (nor a tunnel, whose requests it does not see).

Glob syntax: in ``resources`` and route ``paths``, ``*`` matches within one ``/`` segment and
``**`` across segments; in ``api_methods``, ``*`` matches any run of characters
(``compute.instances.*``, ``storage.*``); ``?`` matches one character. Matching is case-sensitive,
except host names.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from addons import google_api, hosts
from addons.google_api import ApiCall
from addons.hosts import HostPattern

CredentialKind = Literal["adc", "none", "impersonate", "id_token", "key_file"]
Action = Literal["allow", "deny"]
# Distinct (host, method, API method, user) combinations whose candidate rules are kept per policy.
MAX_INDEX = 4096
# flow.metadata["gauth"] key: (host, method, path, ApiCall) as the rules recognised the request.
API_KEY = "api"

# What the audit log's ``credential`` field says for each kind.
_LABELS = {"adc": "adc", "none": "none", "impersonate": "impersonated", "id_token": "id_token",
           "key_file": "key_file"}


@dataclass(frozen=True)
class Credential:
    """Which credential a route uses. Equal credentials share one token cache.

    ``chain``: service accounts, gcloud's order (the last one is the target, the ones before it
    the delegates); for ``id_token`` an empty chain mints with ADC. ``audience``: for ``id_token``;
    None means ``https://HOST`` of each request.
    """

    kind: CredentialKind
    chain: tuple[str, ...] = ()
    audience: str | None = None
    key_file: str | None = None

    @property
    def label(self) -> str:
        return _LABELS[self.kind]

    @property
    def injects(self) -> bool:
        return self.kind != "none"

    def describe(self, host: str | None = None, path: str = "/") -> str:
        """One phrase for ``policy check`` and log lines; with ``host`` (and ``path``), the audience
        a default-audience ID token takes for that request instead of ``https://HOST``."""
        if self.kind == "adc":
            return "ADC (Application Default Credentials)"
        if self.kind == "none":
            return "none (no token added)"
        if self.kind == "impersonate":
            return f"impersonate {_chain_text(self.chain)}"
        if self.kind == "key_file":
            return f"key file {self.key_file}"
        audience = self.audience or (default_audience(host, path) if host else "https://HOST")
        via = f" as {_chain_text(self.chain)}" if self.chain else " with ADC"
        return f"ID token for audience {audience}{via}"


def _chain_text(chain: Sequence[str]) -> str:
    target, delegates = chain[-1], chain[:-1]
    return f"{target} via {' -> '.join(delegates)}" if delegates else target


ADC = Credential("adc")
NONE = Credential("none")


@dataclass(frozen=True)
class Route:
    name: str
    hosts: tuple[HostPattern, ...]
    credential: Credential
    paths: tuple[str, ...] = ()
    proxy_users: frozenset[str] = frozenset()
    origin: str = ""  # FILE:LINE, or the flag it came from

    def match_rank(self, host: str, path: str, user: str | None) -> tuple[int, ...] | None:
        """Specificity when this route matches (higher wins, see the module docstring), else None."""
        if self.proxy_users and user not in self.proxy_users:
            return None
        host_rank = max((hosts.specificity(p) for p in self.hosts if hosts.matches_host(host, p)), default=None)
        if host_rank is None:
            return None
        path_rank = 0
        if self.paths:
            if has_dot_segments(path):
                return None  # /b/ci-x/../prod/o must not take the ci- route's credential to prod
            matched = [_path_rank(p) for p in self.paths if path_matches(p, path)]
            if not matched:
                return None
            path_rank = 1 + max(matched)
        return (1 if self.proxy_users else 0, *host_rank, path_rank)


@dataclass(frozen=True)
class Rule:
    name: str
    action: Action
    hosts: tuple[HostPattern, ...] = ()
    methods: frozenset[str] = frozenset()
    api_methods: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    proxy_users: frozenset[str] = frozenset()
    origin: str = ""
    ports: frozenset[int] = frozenset()  # empty: any port

    @property
    def needs_request(self) -> bool:
        """It names something only a seen request has (so it never matches a tunnel)."""
        return bool(self.methods or self.api_methods or self.resources)

    def matches(self, call: Call, *, resource: bool = True) -> bool:
        """``resource=False``: every criterion but the resource globs (a call without a resource
        still fails a rule that names resources)."""
        if self.proxy_users and call.proxy_user not in self.proxy_users:
            return False
        if self.hosts and not hosts.matches_any(call.host, self.hosts):
            return False
        if self.ports and call.port not in self.ports:
            return False
        if call.tunnel:
            return not self.needs_request
        if self.methods and call.method not in self.methods:
            return False
        if self.api_methods and (call.api_method is None
                                 or not any(api_method_matches(p, call.api_method) for p in self.api_methods)):
            return False
        if not self.resources:
            return True
        if call.resource is None:
            return False
        return not resource or any(resource_matches(p, call.resource) for p in self.resources)


@dataclass(frozen=True)
class Call:
    """What a rule looks at. ``tunnel``: a CONNECT the proxy will not look inside. ``port``: the
    destination's (the CONNECT target's, or the request URL's)."""

    host: str
    method: str = ""
    path: str = "/"
    api_method: str | None = None
    resource: str | None = None
    proxy_user: str | None = None
    tunnel: bool = False
    port: int = 443


@dataclass(frozen=True)
class Decision:
    action: Action
    rule: Rule | None
    reason: str

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @property
    def rule_name(self) -> str | None:
        return self.rule.name if self.rule is not None else None


# A wildcard ID-token route with the default audience mints per host; a check tries this label.
EXAMPLE_LABEL = "example"
FUNCTIONS_SUFFIX = ".cloudfunctions.net"


def audience_varies_by_path(host: str) -> bool:
    """A default ID-token audience here depends on the request's path: a Cloud Function's URL
    (``https://HOST/FUNCTION``) is its audience (``default_audience``)."""
    return host.lower().rstrip(".").endswith(FUNCTIONS_SUFFIX)


_FUNCTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")


def default_audience(host: str, path: str = "/") -> str:
    """What the service expects when no audience is configured: ``https://HOST`` for Cloud Run;
    for Cloud Functions (``REGION-PROJECT.cloudfunctions.net/FUNCTION``) the function's URL,
    ``https://HOST/FUNCTION`` — Google's samples: "For Cloud Functions, endpoint and audience are
    the same" — so each function gets its own token."""
    host = host.lower().rstrip(".")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # a bare IPv6 address
    if audience_varies_by_path(host):
        function = path.partition("?")[0].lstrip("/").partition("/")[0]
        if _FUNCTION_NAME.fullmatch(function):
            return f"https://{host}/{function}"
    return f"https://{host}"


class Minted(NamedTuple):
    """A credential a route names. ``per_host``: an ID token whose audience is each request's host
    under a wildcard, so ``host`` is only an example (``example.SUFFIX``)."""

    route: Route
    credential: Credential
    host: str
    per_host: bool


@dataclass(frozen=True)
class Policy:
    """Routes, rules and the default; ``routes`` in the order written (shorthand flags last)."""

    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    default: Action = "allow"
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @functools.cached_property
    def _indexed(self) -> tuple[tuple[int, Route], ...]:
        return tuple(enumerate(self.routes))

    def route_for(self, host: str, path: str = "/", user: str | None = None) -> Route | None:
        """The most specific route for this request (None: no route, no token).

        Asked per request: without path routes the answer depends on (host, user) only and is kept.
        """
        if self._routes_by_path:
            return self._find_route(host, path, user)
        key = (host, user)
        cache = self._route_cache
        if key not in cache:
            if len(cache) >= MAX_INDEX:
                cache.clear()
            cache[key] = self._find_route(host, path, user)
        return cache[key]

    def _find_route(self, host: str, path: str, user: str | None) -> Route | None:
        best: tuple[tuple[int, ...], Route] | None = None
        for index, route in self._indexed:
            rank = route.match_rank(host, path, user)
            if rank is None:
                continue
            key = (*rank, -index)
            if best is None or key > best[0]:
                best = (key, route)
        return best[1] if best is not None else None

    @functools.cached_property
    def _routes_by_path(self) -> bool:
        return any(route.paths for route in self.routes)

    @functools.cached_property
    def _route_cache(self) -> dict[tuple[str, str | None], Route | None]:
        return {}

    def ordered_routes(self) -> list[Route]:
        """Routes from most to least specific: the order in which a request's route is found."""
        def key(item: tuple[int, Route]) -> tuple[int, ...]:
            index, route = item
            host_rank = max((hosts.specificity(p) for p in route.hosts), default=(0, 0))
            path_rank = 1 + max((_path_rank(p) for p in route.paths), default=-1)
            return (1 if route.proxy_users else 0, *host_rank, path_rank, -index)
        return [route for _, route in sorted(self._indexed, key=key, reverse=True)]

    def decide(self, call: Call) -> Decision:
        """First matching rule wins; else the default.

        Every criterion but the resource takes few values (host, method, API method, user), so
        the rules that pass on those are worked out once per such combination and kept, with their
        resource globs compiled into one regex (see ``_Candidates``): per call, one dict lookup and
        at most one regex match, not a walk over the rules. A reloaded policy is a new object
        with an empty index.
        """
        key = (call.host, call.port, call.method, call.api_method, call.proxy_user, call.tunnel,
               call.resource is None)
        index = self._index
        candidates = index.get(key)
        if candidates is None:
            candidates = _Candidates([(rule, decision) for rule, decision in zip(self.rules, self._decisions, strict=True)
                                      if rule.matches(call, resource=False)], self._default_decisions[call.tunnel])
            if len(index) >= MAX_INDEX:
                index.clear()
            index[key] = candidates
        return candidates.first(call.resource)

    @functools.cached_property
    def _index(self) -> dict[tuple[object, ...], _Candidates]:
        return {}

    @functools.cached_property
    def _decisions(self) -> tuple[Decision, ...]:
        return tuple(Decision(rule.action, rule, f"rule {rule.name!r} ({rule.origin or 'config'}) matched")
                     for rule in self.rules)

    @functools.cached_property
    def _default_decisions(self) -> dict[bool, Decision]:
        return {tunnel: Decision(self.default, None, f"{what}: the default is {self.default}")
                for tunnel, what in ((True, "no rule allows this tunnel"), (False, "no rule matched"))}

    @functools.cached_property
    def intercepted(self) -> tuple[HostPattern, ...]:
        """Hosts whose TLS the proxy must open: every host some route adds a credential for."""
        seen: dict[HostPattern, None] = {}
        for route in self.routes:
            if route.credential.injects:
                for pattern in route.hosts:
                    seen.setdefault(pattern, None)
        return tuple(seen)

    @functools.cached_property
    def untouched(self) -> tuple[str, ...]:
        """Exact names a ``credential = "none"`` route for everyone takes out of a wildcard that is
        intercepted: no request to them can get a credential, so they are tunnelled untouched.

        A name stays intercepted when some route that adds a credential could still win for it: one
        naming ``proxy_users`` (a user's route beats any route for everyone), or one naming that
        exact host (it may come first, or have paths). A wildcard route never beats an exact one.
        """
        names: list[str] = []
        for route in self.routes:
            if route.credential.injects or route.paths or route.proxy_users:
                continue
            for pattern in route.hosts:
                if pattern.wildcard or pattern.suffix in names:
                    continue
                rivals = [r for r in self.routes if r.credential.injects and hosts.matches_any(pattern.suffix, r.hosts)]
                if rivals and not any(r.proxy_users or pattern in r.hosts for r in rivals):
                    names.append(pattern.suffix)
        return tuple(names)

    def intercepts(self, host: str) -> bool:
        """The proxy opens this host's TLS (some request to it may get a credential)."""
        host = hosts.normalize_host(host)
        return hosts.matches_any(host, self.intercepted) and host not in self.untouched

    def intercepted_patterns(self) -> list[HostPattern]:
        return list(self.intercepted)

    def minted_credentials(self) -> list[Minted]:
        """Each distinct credential other than ADC and ``none``, with the first route naming it
        (most specific first) and a host to mint for: what ``doctor`` and ``/readyz`` try."""
        seen: set[tuple[Credential, str | None]] = set()
        found = []
        for route in self.ordered_routes():
            credential = route.credential
            if credential.kind in ("adc", "none"):
                continue
            pattern = route.hosts[0]
            host = f"{EXAMPLE_LABEL}.{pattern.suffix}" if pattern.wildcard else pattern.suffix
            audience = (credential.audience or f"https://{host}") if credential.kind == "id_token" else None
            if (credential, audience) in seen:
                continue
            seen.add((credential, audience))
            per_host = credential.kind == "id_token" and credential.audience is None and (
                pattern.wildcard or audience_varies_by_path(pattern.suffix))
            found.append(Minted(route, credential, host, per_host))
        return found


class _Candidates:
    """The rules that passed on everything but the resource, in order, as one compiled regex.

    Rules up to the first one without ``resources`` (which matches unconditionally) become named
    alternatives of one ``fullmatch``: regex alternation tries them in order, so the group that
    matched is the first matching rule. Same answers as walking the rules (a property test says so).
    """

    def __init__(self, rules: Sequence[tuple[Rule, Decision]], default: Decision) -> None:
        alternatives: list[str] = []
        self.decisions: dict[str, Decision] = {}
        self.otherwise = default
        for i, (rule, decision) in enumerate(rules):
            if not rule.resources:
                self.otherwise = decision
                break
            group = f"r{i}"
            self.decisions[group] = decision
            alternatives.append(f"(?P<{group}>" + "|".join(_compile(p, "/").pattern for p in rule.resources) + ")")
        self.regex = re.compile("|".join(alternatives), re.DOTALL) if alternatives else None

    def first(self, resource: str | None) -> Decision:
        if self.regex is not None and resource is not None:
            match = self.regex.fullmatch(resource)
            if match is not None and match.lastgroup is not None:
                return self.decisions[match.lastgroup]
        return self.otherwise


# -- globs -------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _compile(pattern: str, segment: str | None) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    one = f"[^{re.escape(segment)}]" if segment else "."
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append(one + "*")
        elif char == "?":
            out.append(one)
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern


def resource_matches(pattern: str, resource: str) -> bool:
    """``projects/_/buckets/logs-*/objects/**`` over ``projects/_/buckets/logs-1/objects/a/b``."""
    return _compile(pattern, "/").fullmatch(resource) is not None


def api_method_matches(pattern: str, api_method: str) -> bool:
    """``compute.instances.*`` over ``compute.instances.list``; ``*`` crosses dots."""
    return _compile(pattern, None).fullmatch(api_method) is not None


def path_matches(pattern: str, path: str) -> bool:
    """A glob over the path (query excluded), or a literal prefix ending on a segment boundary:
    ``/storage/v1/b/logs`` matches ``/storage/v1/b/logs`` and ``/storage/v1/b/logs/o``, not
    ``/storage/v1/b/logs2``."""
    path = path.partition("?")[0]
    if is_glob(pattern):
        return _compile(pattern, "/").fullmatch(path) is not None
    if not path.startswith(pattern):
        return False
    return len(path) == len(pattern) or pattern.endswith("/") or path[len(pattern)] == "/"


def _path_rank(pattern: str) -> int:
    """Longer literal text is more specific; a glob counts the text before its first wildcard."""
    return len(re.split(r"[*?]", pattern, maxsplit=1)[0])


def has_dot_segments(path: str) -> bool:
    """``/a/../b``, ``/a/./b`` or their percent-encoded forms: the resource such a path names is
    ambiguous (a front end may or may not collapse it), so the policy treats it as unrecognised."""
    raw = path.partition("?")[0].lower().replace("%2e", ".")
    return any(segment in (".", "..") for segment in re.split(r"/|%2f|\\", raw))


def covers(earlier: Iterable[str], later: Iterable[str]) -> bool:
    """Every pattern of ``later`` is one of ``earlier``'s or falls under a catch-all there
    (used for shadowing warnings; conservative: False when unsure)."""
    first = set(earlier)
    return all(p in first or "**" in first or (p.count("/") == 0 and "**" not in p and "*" in first) for p in later)


def recognise(host: str, method: str, path: str, content_type: str = "") -> ApiCall:
    """The API method and resource as the audit log names them; nothing for a path with dot
    segments (what Google would act on is then unclear). Rules and the audit log share it."""
    return ApiCall() if has_dot_segments(path) else google_api.describe(host, method, path, content_type)


def request_call(host: str, method: str, path: str, content_type: str = "",
                 proxy_user: str | None = None, api: ApiCall | None = None, port: int = 443) -> Call:
    """The Call a seen request makes (``api``: its recognition, if already done)."""
    if api is None:
        api = recognise(host, method, path, content_type)
    return Call(host=hosts.normalize_host(host), method=method.upper(), path=path,
                api_method=api.api_method, resource=api.resource, proxy_user=proxy_user, port=port)
