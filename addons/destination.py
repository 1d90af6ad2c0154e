"""Where a request really goes, and whether it may carry a token: decided once, used by every concern.

The invariant (docs/security.md, "Host confusion"): a request may carry a Google token only if the
upstream connection it travels on goes to the host it names, over TLS the proxy originates and
verifies against that name, and that name is the TLS server name the client asked for. The
injection patterns are applied later (GoogleAuth); this module only says where a request goes and
whether that path is one a token may take.

How mitmproxy picks the upstream, which is what the decision mirrors:
- inside a CONNECT tunnel, requests go to the CONNECT target (``--resolve`` may change the
  address, never the name) and upstream TLS is verified against the client's server name;
- outside a tunnel (plain HTTP to the proxy port), they go to the absolute-form URL's host.
TLS spoken straight to the proxy port is refused (``Destinations.next_layer``): the client's
server name would say nothing about where its requests go.
"""

from __future__ import annotations

import ipaddress
import logging
import weakref
from collections.abc import Generator, Iterable, MutableMapping
from typing import NamedTuple

from mitmproxy import connection, http, tls
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy import commands, events, layer, mode_specs
from mitmproxy.proxy.layer import NextLayer

from addons import hosts

logger = logging.getLogger(__name__)

# Its own metadata key: flow.metadata["gauth"] marks a flow the audit log records (injected hosts,
# denials), and every request gets a destination.
METADATA_KEY = "gauth_destination"


class Tunnel(NamedTuple):
    """The CONNECT target a client asked for (before any ``--resolve`` override)."""

    host: str
    port: int


class Destination(NamedTuple):
    """Where one request goes. ``tokenable``: a token may travel this path (if the host is injected)."""

    host: str  # the real destination name, normalised: what policy and audit see
    port: int
    tokenable: bool
    reason: str | None = None  # why not tokenable (operational log, audit)
    plain: bool = False  # the client spoke plain HTTP; a token needs the upstream leg upgraded to TLS


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` or ``[v6]:port`` -> (normalised host, port or None). Garbage gives ("", None)."""
    authority = authority.strip()
    host, port_text = authority, ""
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        if rest.startswith(":"):
            port_text = rest[1:]
        elif rest:
            return "", None
    elif authority.count(":") == 1:
        host, port_text = authority.split(":")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            return "", None
        return hosts.normalize_host(host), int(port_text)
    return hosts.normalize_host(host), None


def is_ip_literal(host: str) -> bool:
    if ":" not in host and not host[-1:].isdigit():
        return False  # a DNS name (the common case; ip_address() raising costs ~20 µs)
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _authority_mismatch(authorities: Iterable[str], name: str, port: int) -> str | None:
    for authority in authorities:
        host, aport = split_authority(authority)
        if host != name or (aport is not None and aport != port):
            return f"the request names {authority!r} but travels to {name}:{port}"
    return None


def decide(
    *,
    client_tls: bool,
    client_sni: str | None,
    tunnel: Tunnel | None,
    request_host: str,
    request_port: int,
    authorities: Iterable[str],
    upstream_sni: str | None = None,
) -> Destination:
    """The destination of one request and whether a token may travel there (pure).

    Args:
        client_tls: the client's leg is TLS (we terminate it).
        client_sni: the TLS server name the client sent.
        tunnel: the CONNECT target of the client connection, None outside a tunnel.
        request_host, request_port: mitmproxy's destination for the request (outside a tunnel,
            the absolute-form URL or Host header; inside, the tunnel's possibly overridden address).
        authorities: every name the request itself carries (Host headers, ``:authority``, an
            absolute-form target); an upstream front end may route by any of them.
        upstream_sni: the name upstream TLS is (or will be) verified against, when already known.
    """
    authorities = list(authorities)
    if tunnel is not None:
        name, port = hosts.normalize_host(tunnel.host), tunnel.port
        if not client_tls:
            return Destination(name, port, False, "plain HTTP inside a CONNECT tunnel")
        if hosts.normalize_host(client_sni or "") != name:
            return Destination(name, port, False, f"TLS server name {client_sni!r} differs from the CONNECT target")
        if upstream_sni is not None and hosts.normalize_host(upstream_sni) != name:
            return Destination(name, port, False, "upstream TLS is verified against another name")
        mismatch = _authority_mismatch(authorities, name, port)
        if mismatch:
            return Destination(name, port, False, mismatch)
        if not name or is_ip_literal(name):
            return Destination(name, port, False, "IP addresses never get tokens")
        return Destination(name, port, True)
    name, port = hosts.normalize_host(request_host), request_port
    if client_tls:
        return Destination(name, port, False, "TLS to the proxy port outside a CONNECT tunnel")
    mismatch = _authority_mismatch(authorities, name, port)
    if mismatch:
        return Destination(name, port, False, mismatch, plain=True)
    if not name or is_ip_literal(name):
        return Destination(name, port, False, "IP addresses never get tokens", plain=True)
    # Plain http:// to a name: a token may go only on the TLS leg we open to that same name.
    return Destination(name, port, True, plain=True)


def request_authorities(request: http.Request) -> list[str]:
    """Every name a request carries that an upstream might route by."""
    names = list(request.headers.get_all("host"))
    if request.authority:
        names.append(request.authority)
    return names


class _Refuse(layer.Layer):
    """Closes the client connection at once (no bytes: the client expects TLS, not HTTP)."""

    def __init__(self, context: layer.Context, reason: str) -> None:
        super().__init__(context)
        self.reason = reason

    def _handle_event(self, event: events.Event) -> Generator[commands.Command, object, None]:
        if isinstance(event, events.Start):
            yield commands.Log(self.reason, logging.INFO)
            yield commands.CloseConnection(self.context.client)


class Destinations:
    """Records CONNECT targets, refuses TLS to the proxy port, and labels each request's destination.

    Must run before every addon that reads ``destination_of(flow)``.
    """

    def __init__(self) -> None:
        self.tunnels: MutableMapping[connection.Client, Tunnel] = weakref.WeakKeyDictionary()

    def next_layer(self, nextlayer: NextLayer) -> None:
        context = nextlayer.context
        # The decision's depth: layers an earlier addon built for it were appended after it.
        depth = next((i for i, lay in enumerate(context.layers) if lay is nextlayer.layer), len(context.layers))
        if (
            depth == 1
            and isinstance(context.client.proxy_mode, mode_specs.RegularMode)
            and context.client.transport_protocol == "tcp"
            and starts_like_tls_record(nextlayer.data_client())
        ):
            nextlayer.layer = _Refuse(
                context,
                "refused TLS spoken directly to the proxy port: use http:// for the proxy "
                "(HTTPS_PROXY=http://...) and let the client send CONNECT",
            )

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        # "storage.googleapis.com." is the same name; OpenSSL's upstream set-up chokes on the dot.
        client = data.context.client
        if client.sni and client.sni.endswith("."):
            client.sni = hosts.normalize_host(client.sni)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        # Recorded before --resolve may change the server address; the latest CONNECT wins.
        self.tunnels[flow.client_conn] = Tunnel(flow.request.host, flow.request.port)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        destination = decide(
            client_tls=flow.client_conn.tls,
            client_sni=flow.client_conn.sni,
            tunnel=self.tunnels.get(flow.client_conn),
            request_host=flow.request.host,
            request_port=flow.request.port,
            authorities=request_authorities(flow.request),
            upstream_sni=flow.server_conn.sni if flow.server_conn.address else None,
        )
        flow.metadata[METADATA_KEY] = destination


def destination_of(flow: http.HTTPFlow) -> Destination | None:
    """The destination Destinations recorded, or None when it is not loaded (then: no token)."""
    return flow.metadata.get(METADATA_KEY)


addons = [Destinations()]
