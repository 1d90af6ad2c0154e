"""What may pass at all: keeps the node's own metadata server out of reach through the proxy.

A credential broker must not become a path to the metadata server of the machine it runs on,
so link-local addresses and metadata host names are refused unless explicitly allowed.
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, exceptions, http

from addons import hosts, options
from addons.destination import destination_of
from addons.errors import error_response
from addons.metadata import is_metadata_host, parse_ip, system_resolver
from addons.metadata_guard import MetadataGuard

logger = logging.getLogger(__name__)

_METADATA_REQUEST_HEADERS = ("metadata-flavor", "x-google-metadata-request", "x-forwarded-for")


class Policy:
    def __init__(self) -> None:
        self.allow_metadata = False
        self.allowed: list[hosts.HostPattern] = []

    def load(self, loader: Any) -> None:
        options.declare(loader, "allow_metadata", "allow_host")

    def configure(self, updated: set[str]) -> None:
        if "allow_metadata" in updated:
            self.allow_metadata = ctx.options.allow_metadata
        if "allow_host" in updated:
            try:
                self.allowed = [hosts.parse_host_pattern(p) for p in ctx.options.allow_host]
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def denial(self, host: str | None) -> str | None:
        """Why a request to ``host`` is refused, or None when it may pass."""
        if is_metadata_host(host) and not self.allow_metadata:
            return "The GCE metadata server cannot be reached through gcp-auth-proxy."
        if self.allowed and not hosts.matches_any(host, self.allowed):
            return f"gcp-auth-proxy's host policy does not allow {host}."
        return None

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        host, port = flow.request.host, flow.request.port
        if self._enforce(flow, host):
            return
        if self.allow_metadata and await _reaches_metadata(host, port):
            # A tunnel would hide the headers the metadata server relies on (Metadata-Flavor is
            # its SSRF defence); plain http:// requests are seen, and stripped, by requestheaders.
            self._deny(flow, "The metadata server can be reached only with plain http:// requests "
                             "through gcp-auth-proxy, not through a CONNECT tunnel.")

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        destination = destination_of(flow)
        if destination is not None:
            host, port = destination.host, destination.port
        else:  # loaded alone with -s: the best guess without Destinations
            host, port = (flow.client_conn.sni if flow.client_conn.tls else flow.request.host) or "", flow.request.port
        if self._enforce(flow, host):
            return
        # The metadata server's SSRF defence is that clients must send Metadata-Flavor: a client's
        # own never reaches it through us, by name, by address, or (when allowed) by a name that
        # resolves to it. Without --allow-metadata the metadata guard refuses such connections.
        if is_metadata_host(host) or (self.allow_metadata and await _reaches_metadata(host, port)):
            for name in _METADATA_REQUEST_HEADERS:
                flow.request.headers.pop(name, None)

    def _enforce(self, flow: http.HTTPFlow, host: str | None) -> bool:
        reason = self.denial(host)
        if reason is None:
            return False
        self._deny(flow, reason)
        return True

    @staticmethod
    def _deny(flow: http.HTTPFlow, reason: str) -> None:
        flow.metadata.setdefault("gauth", {})["auth"] = "denied"
        flow.response = error_response(403, reason, "forbiddenByProxyPolicy", request=flow.request)


async def _reaches_metadata(host: str, port: int) -> bool:
    """The name is, or resolves to, the metadata server (a lookup failure counts as unknown: no)."""
    if is_metadata_host(host):
        return True
    if parse_ip(host) is not None:
        return False
    try:
        addresses = await system_resolver(host, port)
    except (OSError, UnicodeError):
        return False
    return any(is_metadata_host(a) for a in addresses)


addons = [Policy(), MetadataGuard()]
