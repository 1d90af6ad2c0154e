"""Upstream address override (``--resolve``): connect elsewhere, keep the name for SNI and Host.

Real uses are Private Google Access VIPs and Private Service Connect endpoints; tests use it to
reach the local fake Google. The same rules serve the proxy's own token fetches (token_transport).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks

from addons import hosts, options

logger = logging.getLogger(__name__)


class ResolveRule(NamedTuple):
    pattern: hosts.HostPattern
    address: str
    port: int | None  # None keeps the port the client asked for


def parse_resolve_rule(text: str) -> ResolveRule:
    """Parse ``PATTERN=ADDR[:PORT]``, e.g. ``*.googleapis.com=199.36.153.4:443``.

    Raises:
        ValueError: with a message that names the bad part.
    """
    pattern_text, sep, target = text.partition("=")
    if not sep or not pattern_text or not target:
        raise ValueError(f"invalid resolve rule {text!r}: expected PATTERN=ADDR:PORT")
    pattern = hosts.parse_host_pattern(pattern_text)
    address, port = _parse_target(text, target.strip())
    return ResolveRule(pattern, address, port)


def _parse_target(rule: str, target: str) -> tuple[str, int | None]:
    port_text: str | None = None
    if target.startswith("["):  # [v6]:port
        host, _, rest = target[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"invalid resolve rule {rule!r}: bad address {target!r}")
            port_text = rest[1:]
    elif target.count(":") == 1:
        host, port_text = target.split(":")
    else:
        host = target
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            hosts.parse_host_pattern(host)
        except ValueError:
            raise ValueError(f"invalid resolve rule {rule!r}: {host!r} is not an address or host name") from None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid resolve rule {rule!r}: port {port_text!r} is not 1-65535")
    return host, int(port_text)


def parse_resolve_rules(texts: Sequence[str]) -> list[ResolveRule]:
    return [parse_resolve_rule(t) for t in texts]


def resolve(rules: Sequence[ResolveRule], host: str, port: int) -> tuple[str, int] | None:
    """Where to connect for ``host:port``; the most specific rule wins, None when no rule matches."""
    rule = hosts.best_match(host, ((r.pattern, r) for r in rules))
    if rule is None:
        return None
    return rule.address, rule.port if rule.port is not None else port


class Resolve:
    """Rewrites the upstream address of every connection (intercepted, tunnelled, plain HTTP)."""

    def __init__(self) -> None:
        self.rules: list[ResolveRule] = []

    def load(self, loader: Any) -> None:
        options.declare(loader, "resolve")

    def configure(self, updated: set[str]) -> None:
        if "resolve" in updated:
            try:
                self.rules = parse_resolve_rules(ctx.options.resolve)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if not self.rules or data.server.address is None:
            return
        host, port, *_ = data.server.address
        target = resolve(self.rules, host, port)
        if target is not None:
            # mitmproxy derives the upstream SNI from the name (or the client's SNI), not from
            # the address, so changing only the address keeps certificate checks on the name.
            data.server.address = target


addons = [Resolve()]
