"""The composition root: each component made once, the shared ones handed over by constructor.

No component looks another up by name; this import graph is the real dependency graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from addons.admin import Admin
from addons.audit_log import AuditLog
from addons.destination import Destinations
from addons.google_auth import GoogleAuth
from addons.limits import Limits
from addons.metadata_guard import MetadataGuard
from addons.metrics import Metrics
from addons.placeholder import PlaceholderAuth
from addons.policy import Policy
from addons.proxy_auth import ProxyAuth
from addons.resolve import Resolve
from addons.routing import Routing
from addons.rules import Rules
from addons.same_user import SameUser
from addons.streaming import Streaming
from addons.token_source import TokenSource
from addons.token_sources import TokenSources
from addons.upstream_proxy import UpstreamProxy


@dataclass(frozen=True)
class Components:
    """Our components, each made once; ``ordered()`` is the order their hooks run in."""

    same_user: SameUser
    destinations: Destinations
    limits: Limits
    proxy_auth: ProxyAuth
    routing: Routing
    policy: Policy
    rules: Rules
    resolve: Resolve
    upstream_proxy: UpstreamProxy
    metadata_guard: MetadataGuard
    placeholder: PlaceholderAuth
    tokens: TokenSource
    sources: TokenSources
    google_auth: GoogleAuth
    streaming: Streaming
    audit_log: AuditLog
    metrics: Metrics | None
    admin: Admin | None

    def ordered(self) -> list[Any]:
        """Order is behaviour.

        The same-user check first (on loopback, another user's connection is refused before any
        other component sees it: it takes no connection slot from Limits and cannot spend the
        global budget of failed proxy-auth checks that the owner's own clients share), then
        Destinations (it refuses TLS to the proxy port and labels every request with where
        it really goes; every later concern decides on that), connection limits next (they count
        every connection), proxy auth next (strangers get nothing; it names the user routes and
        rules may refer to), then the routing table (it only holds the policy the later ones
        read), then policy (a denied request never gets a token), then the rules (a call they deny
        gets its 403 before any token is fetched; a CONNECT they deny is never opened), then the address override, then the upstream proxy (it takes every
        connection not bypassed through ``--upstream-proxy``: its layer wraps the HTTP layer
        Destinations has let through, it asks for the address Resolve chose, and it sets
        ``server.via`` so the metadata guard checks that address as asked of the upstream proxy
        rather than resolving it; its CONNECT error page replaces the generic one Limits makes),
        then the metadata guard (it checks the final address), then placeholder stripping (a `run`
        child's placeholder token is removed before GoogleAuth decides whether the request brings
        its own Authorization), then token injection, then streaming (it holds a small request
        body only when the proxy's token went on it, and leaves whole the 401 GoogleAuth keeps for
        a replay; the audit log and metrics after it count every streamed body chunk by chunk),
        and the audit log last so it sees what happened (its 503 gate is the last word before a
        request goes upstream); metrics after the audit log count what the client finally got;
        the admin endpoints only read the others.
        """
        chain: list[Any] = [self.same_user, self.destinations, self.limits, self.proxy_auth, self.routing,
                            self.policy, self.rules, self.resolve, self.upstream_proxy, self.metadata_guard, self.placeholder,
                            self.google_auth, self.streaming, self.audit_log]
        return chain + [c for c in (self.metrics, self.admin) if c is not None]


def build(*, observability: bool = True, proxyserver: Any = None) -> Components:
    """Make every component once and wire the shared ones.

    Args:
        observability: make Metrics and Admin (the program leaves them out without
            ``--admin-listen``: they would only cost hook calls).
        proxyserver: mitmproxy's Proxyserver addon, whose connection handlers Limits and
            SameUser need.
    """
    tokens = TokenSource(label="adc")  # ADC: what /readyz and /metrics report on
    sources = TokenSources(tokens)  # plus one per other credential a route names, made on first use
    routing = Routing()
    upstream_proxy = UpstreamProxy(sources)  # every credential's token fetches take the same route
    google_auth = GoogleAuth(sources, routing, carried=upstream_proxy.carried)
    audit_log = AuditLog()
    same_user = SameUser(proxyserver=proxyserver)  # its gate also guards the admin endpoints
    metrics = (Metrics(tokens=tokens, audit=audit_log, gate=same_user.gate, routing=routing, sources=sources)
               if observability else None)
    return Components(
        same_user=same_user,
        destinations=Destinations(),
        limits=Limits(proxyserver=proxyserver, carried=upstream_proxy.carried),
        proxy_auth=ProxyAuth(),
        routing=routing,
        policy=Policy(),
        rules=Rules(routing),
        resolve=Resolve(),
        upstream_proxy=upstream_proxy,
        metadata_guard=MetadataGuard(),
        placeholder=PlaceholderAuth(),
        tokens=tokens,
        sources=sources,
        google_auth=google_auth,
        streaming=Streaming(),
        audit_log=audit_log,
        metrics=metrics,
        admin=(Admin(tokens=tokens, audit=audit_log, metrics=metrics, gate=same_user.gate, sources=sources,
                     routing=routing)
               if observability else None),
    )
