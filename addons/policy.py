"""What may pass at all: keeps the node's own metadata server out of reach through the proxy.

A credential broker must not become a path to the metadata server of the machine it runs on,
so link-local addresses and metadata host names are refused unless explicitly allowed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons import hosts
from addons.errors import error_response
from addons.metadata import is_metadata_host
from addons.metadata_guard import MetadataGuard

logger = logging.getLogger(__name__)


class Policy:
    def __init__(self) -> None:
        self.allow_metadata = False
        self.allowed: list[hosts.HostPattern] = []

    def load(self, loader: Any) -> None:
        loader.add_option(
            "policy_allow_metadata", bool, False,
            "Let clients reach the GCE metadata server (169.254.169.254, metadata.google.internal) "
            "through the proxy. Off: a credential broker must not hand out the node's own identity.",
        )
        loader.add_option(
            "policy_allow_hosts", Sequence[str], [],
            "If set, only these hosts (exact or *.suffix) may be reached at all; others get 403.",
        )

    def configure(self, updated: set[str]) -> None:
        if "policy_allow_metadata" in updated:
            self.allow_metadata = ctx.options.policy_allow_metadata
        if "policy_allow_hosts" in updated:
            try:
                self.allowed = [hosts.parse_host_pattern(p) for p in ctx.options.policy_allow_hosts]
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def denial(self, host: str | None) -> str | None:
        """Why a request to ``host`` is refused, or None when it may pass."""
        if is_metadata_host(host) and not self.allow_metadata:
            return "The GCE metadata server cannot be reached through gcp-auth-proxy."
        if self.allowed and not hosts.matches_any(host, self.allowed):
            return f"gcp-auth-proxy's host policy does not allow {host}."
        return None

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        self._enforce(flow, flow.request.host)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        host = flow.client_conn.sni if flow.client_conn.tls else flow.request.host
        if self._enforce(flow, host):
            return
        if is_metadata_host(host):
            # Never let a client's own metadata headers (or its address) through to a metadata server.
            for name in ("metadata-flavor", "x-google-metadata-request", "x-forwarded-for"):
                flow.request.headers.pop(name, None)

    def _enforce(self, flow: http.HTTPFlow, host: str | None) -> bool:
        reason = self.denial(host)
        if reason is None:
            return False
        flow.metadata.setdefault("gauth", {})["auth"] = "denied"
        flow.response = error_response(403, reason, "forbiddenByProxyPolicy")
        return True


addons = [Policy(), MetadataGuard()]
