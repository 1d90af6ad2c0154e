"""Connect-time check: the address a connection really goes to is never the metadata server.

Runs after every address override (``--resolve``), on what a name resolves to, and pins the
connection to the address it checked; a name it cannot resolve is refused, not handed back for
a second, unchecked lookup. Shares ``allow_metadata`` with Policy.
"""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.proxy import server_hooks

from addons.metadata import Pinned, Resolver, pin_address, system_resolver

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
        outcome = await pin_address(host, port, self.resolver)
        if isinstance(outcome, Pinned):
            if outcome.address != host:
                server.address = (outcome.address, port)
            return
        logger.warning("refused a connection to %s: %s", host, outcome.value)
        server.error = f"gcp-auth-proxy refuses to connect to {host}: {outcome.value}."

