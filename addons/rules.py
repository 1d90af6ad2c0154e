"""Enforces the ``[[rule]]`` entries: a denied call gets a Google-style 403 naming the rule and
nothing goes upstream; in default-deny mode a CONNECT to a host no route injects for is refused
unless a rule allows that host (an egress allowlist).

Runs after proxy auth (rules may name ``proxy_users``) and before token injection. With no
rules and ``default = "allow"`` it costs one attribute check per request.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http

from addons import hosts
from addons.destination import destination_of
from addons.errors import error_response
from addons.policy_model import API_KEY, Call, Decision, Policy, recognise, request_call
from addons.proxy_auth import proxy_user_of
from addons.routing import Routing

logger = logging.getLogger(__name__)

REASON = "forbiddenByProxyPolicy"


def denial_message(call: Call, decision: Decision) -> str:
    """What the client reads (gcloud and gsutil print it): the call, and the rule that refused it."""
    what = "a tunnel" if call.tunnel else (call.api_method or f"{call.method} {call.path.partition('?')[0]}")
    on = f" on {call.resource}" if call.resource and not call.tunnel else ""
    at = call.host if call.port in (80, 443) and not call.tunnel else f"{call.host}:{call.port}"
    if decision.rule is not None:
        return f"gcp-auth-proxy policy: rule {decision.rule.name!r} denies {what}{on} at {at}."
    return (f"gcp-auth-proxy policy: no rule allows {what}{on} at {at}, and the default is deny "
            "(see `gcp-auth-proxy policy explain`).")


class Rules:
    """``routing``: the shared policy holder from the composition root (made here when loaded alone)."""

    def __init__(self, routing: Routing | None = None) -> None:
        self._owns_routing = routing is None
        self.routing = routing if routing is not None else Routing()

    def load(self, loader: Any) -> None:
        if self._owns_routing:
            self.routing.load(loader)

    def configure(self, updated: set[str]) -> None:
        if self._owns_routing:
            self.routing.configure(updated)

    @property
    def policy(self) -> Policy:
        return self.routing.policy

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        policy = self.policy
        if not policy.rules and policy.default == "allow":
            return
        host = hosts.normalize_host(flow.request.host)
        if policy.intercepts(host):
            return  # its requests are seen: each one is decided on its own
        call = Call(host=host, method="CONNECT", proxy_user=proxy_user_of(flow), tunnel=True,
                    port=flow.request.port)
        decision = policy.decide(call)
        if decision.allowed:
            return
        meta = flow.metadata.setdefault("gauth", {})
        meta.update(auth="denied", host=host, rule=decision.rule_name, error=decision.reason,
                    decision=decision.action)
        logger.info("refused a tunnel to %s: %s", host, decision.reason)
        flow.response = error_response(403, denial_message(call, decision), REASON)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        policy = self.policy
        if not policy.rules and policy.default == "allow":
            return
        destination = destination_of(flow)
        host = destination.host if destination is not None else flow.request.host
        request = flow.request
        api = recognise(host, request.method, request.path, request.headers.get("content-type", ""))
        call = request_call(host, request.method, request.path, proxy_user=proxy_user_of(flow), api=api,
                            port=request.port)
        decision = policy.decide(call)
        meta = flow.metadata.setdefault("gauth", {})
        meta["rule"] = decision.rule_name
        meta["decision"] = decision.action  # for the metrics: what the rules said, whatever came after
        meta[API_KEY] = (host, request.method, request.path, api)  # the audit record reuses it
        if decision.allowed:
            return
        meta.update(auth="denied", host=call.host, error=decision.reason)
        flow.response = error_response(403, denial_message(call, decision), REASON, request=request)


addons = [Rules()]
