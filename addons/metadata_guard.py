"""Connect-time check: the address a connection really goes to is never the metadata server.

Runs after every address override (``--resolve``), on what a name resolves to, and pins the
connection to the address it checked; a name it cannot resolve is refused, not handed back for
a second, unchecked lookup. Shares ``allow_metadata`` with Policy.

A connection that goes through the upstream proxy (``server.via`` set while the hooks run, see
addons/upstream_proxy.py) is checked as it will be asked for, by name and by every spelling of a
link-local address, and not resolved: the upstream proxy resolves it, and our DNS may not know it.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, ctx
from mitmproxy.proxy import server_hooks

from addons.metadata import (
    Pinned,
    Refusal,
    Resolver,
    is_metadata_host,
    pin_address,
    system_resolver,
)

logger = logging.getLogger(__name__)


class MetadataGuard:
    """Checks the address a connection is about to go to, after every address override.

    Listed after Resolve in ``default_addons()``; shares ``allow_metadata`` with Policy.
    """

    def __init__(self, resolver: Resolver = system_resolver) -> None:
        self.resolver = resolver

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if server.address is None or server.error or ctx.options.allow_metadata:
            return
        host, port = server.address[0], server.address[1]
        if server.via is not None:  # asked of the upstream proxy: nothing of ours to resolve or pin
            if is_metadata_host(host):
                self._refuse(server, host, Refusal.METADATA)
            return
        outcome = await pin_address(host, port, self.resolver)
        if isinstance(outcome, Pinned):
            if outcome.address != host:
                server.address = (outcome.address, port)
            return
        self._refuse(server, host, outcome)

    @staticmethod
    def _refuse(server: connection.Server, host: str, refusal: Refusal) -> None:
        logger.warning("refused a connection to %s: %s", host, refusal.value)
        server.error = f"gcp-auth-proxy refuses to connect to {host}: {refusal.value}."

