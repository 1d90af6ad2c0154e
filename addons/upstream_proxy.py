"""Every upstream connection through an HTTP proxy (``--upstream-proxy``), always with CONNECT.

A corporate network often allows the outside world only through its own proxy. With
``--upstream-proxy http://HOST:PORT`` each connection the proxy would open to a server (CONNECT
tunnels, intercepted TLS, plain ``http://`` requests) becomes a CONNECT tunnel through that
proxy; the proxy's own token fetches do the same (``addons/token_transport.py``, from the same
``Routing``). Decided:

- **Always CONNECT, never a forwarded request.** Plain ``http://`` upstream legs are tunnelled
  too (``CONNECT host:80``), so the upstream proxy never sees a request line or header of ours
  in clear; a token only ever travels inside TLS we originate through the tunnel, verified
  against the Google name. A proxy that allows CONNECT only to 443 refuses port 80: the client
  gets that refusal as a JSON error.
- **What we ask for:** ``--resolve`` still decides the address: with a rule the CONNECT target is
  the rule's address (a Private Google Access VIP, the tests' fake), otherwise it is the name, and
  the upstream proxy resolves it. The metadata guard checks that target, by name and by every
  spelling of a link-local address, without resolving it (our own DNS may not even see the
  outside world). The GCE metadata server and loopback names and addresses are never asked of
  the upstream proxy: they are this machine's own.
- **Bypass** (``--upstream-proxy-bypass``, exact or ``*.suffix``) is decided on the name the client
  asked for (inside a CONNECT tunnel: the CONNECT target), before ``--resolve``.
- **Errors** (refusals such as 407 and 403, a 502, a close or garbage instead of an answer, no
  answer in ``--connect-timeout``) reach the client as JSON 502 (504 for timeouts) naming the
  upstream proxy; its status is never passed on as ours (a 407 would make the client offer us
  its proxy password).

How, in mitmproxy 12: its upstream mode would replace our regular mode (the TLS refusal and the
host-confusion checks in ``addons/destination.py`` are built on it) and answers CONNECT before it
has reached the upstream. ``server.via`` set in ``server_connect`` is not enough either: only
mitmproxy's HTTP layer reads it, when it builds a connection, and the connection that carries a
CONNECT tunnel is opened before that. So ``next_layer`` puts one ``_Tunnels`` layer on top of every
client connection's HTTP layer: every ``OpenConnection`` from beneath passes it, and it turns the
ones to route into a connection to the upstream proxy plus a CONNECT handshake, then relays the
bytes (mitmproxy's own ``HttpUpstreamProxy`` does that per connection; this is the same for a
whole client connection). The CONNECT tunnel's own connection is opened when the client's CONNECT
arrives, so a failure is still the answer to that CONNECT. This uses mitmproxy's sans-I/O layer
protocol (commands, events, ``blocking``) as of 12.3, through the documented ``next_layer`` hook;
nothing of mitmproxy is patched. The connection to the upstream proxy itself is an ordinary one:
``--resolve`` and the metadata guard apply to its address, ``--connect-timeout`` to reaching it.

For a routed connection the layer runs the ``server_connect`` hooks itself, with ``server.via``
set to the upstream proxy: ``Resolve`` (before this component) picks the address, the metadata
guard (after it) checks it without resolving. ``via`` is cleared before mitmproxy's HTTP layer
sees the connection again: it would otherwise stack its own upstream-proxy layer on follow-up
connections and never reuse this one. ``server_connected``/``server_connect_error`` follow as
for a direct connection. The layer asks the ``http_connect_upstream`` hook before sending
CONNECT; this component adds ``Proxy-Authorization`` there (as mitmproxy's ``upstream_auth``).
The tunnelled connection has no ``peername`` and no transport (its peer is the upstream proxy):
``carried`` maps it to the connection to the upstream proxy that carries it and the CONNECT
target, which the read timeout (``addons/limits.py``) closes and the 401 replay
(``addons/replay.py``) takes again.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
import weakref
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit

from mitmproxy import connection, ctx, exceptions, http
from mitmproxy.net.http import http1
from mitmproxy.proxy import commands, events, layer, layers, mode_specs, server_hooks
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.http._hooks import HttpConnectUpstreamHook

from addons import hosts, options
from addons.errors import error_response
from addons.metadata import is_metadata_host

if TYPE_CHECKING:
    from addons.token_source import TokenSource
    from addons.token_sources import TokenSources

logger = logging.getLogger(__name__)

Address = tuple[str, int]
# A proxy that sends more than this without finishing its answer to CONNECT is not speaking HTTP.
MAX_CONNECT_RESPONSE = 16 * 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_LINE_END = re.compile(rb"\r?\n")
# flow.metadata key of the CONNECT flow the layer builds for ``http_connect_upstream``.
METADATA_KEY = "gauth_upstream_proxy"


class ProxySpec(NamedTuple):
    """An HTTP proxy to tunnel through, with optional Basic credentials (never in repr)."""

    host: str
    port: int
    credentials: tuple[str, str] | None = None

    @property
    def address(self) -> Address:
        return self.host, self.port

    def __str__(self) -> str:
        return format_authority(self.host, self.port)

    def __repr__(self) -> str:
        auth = ", with credentials" if self.credentials else ""
        return f"ProxySpec({self}{auth})"

    def proxy_authorization(self) -> str | None:
        if self.credentials is None:
            return None
        user, password = self.credentials
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class Routing(NamedTuple):
    """Which connections go through the upstream proxy: all but bypassed names and the metadata server."""

    proxy: ProxySpec | None = None
    bypass: tuple[hosts.HostPattern, ...] = ()

    def via(self, host: str) -> ProxySpec | None:
        """The proxy to tunnel a connection to ``host`` (the name asked for) through, or None: direct.

        This machine's own addresses (loopback, the metadata server) are always direct: no
        upstream proxy can reach them.
        """
        if self.proxy is None or is_metadata_host(host):
            return None
        name = _canonical(host)
        if _is_loopback(name) or any(hosts.matches_host(name, p) for p in self.bypass):
            return None
        return self.proxy


class Carried(NamedTuple):
    """How a tunnelled connection goes: ``carrier``, our connection to the upstream proxy (the
    only one with a transport), ``proxy`` and the CONNECT ``target`` it asked for."""

    carrier: connection.Server
    proxy: ProxySpec
    target: Address


class UpstreamProxyError(Exception):
    """The upstream proxy did not open a tunnel. The message names it, never its credentials."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


def _canonical(host: str) -> str:
    name = hosts.normalize_host(host).strip("[]")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _is_loopback(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def format_authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_proxy_url(text: str) -> ProxySpec:
    """``http://[USER:PASS@]HOST:PORT`` -> ProxySpec (USER and PASS percent-decoded).

    Raises:
        ValueError: another scheme, no host or port, a path, or garbage.
    """
    try:
        url = urlsplit(text.strip())
        port = url.port
    except ValueError as e:
        raise ValueError(f"{_shown(text)} is not a proxy URL: {e}") from None
    if url.scheme.lower() != "http":
        raise ValueError(
            f"{_shown(text)}: only http:// upstream proxies are supported (every connection is a CONNECT "
            "tunnel through it; TLS to the proxy itself and SOCKS are not supported)")
    if not url.hostname or port is None or port == 0:
        raise ValueError(f"{_shown(text)} needs a host and a port, e.g. http://proxy.example:3128")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"{_shown(text)}: a proxy URL has no path or query")
    credentials = None
    if url.username is not None:
        user, password = unquote(url.username), unquote(url.password or "")
        if not user:
            raise ValueError(f"{_shown(text)}: the user name is empty")
        credentials = (user, password)
    host = url.hostname
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        hosts.parse_host_pattern(host)  # a DNS name; raises ValueError otherwise
    return ProxySpec(host, port, credentials)


def _shown(text: str) -> str:
    """The URL for an error message, without a password."""
    try:
        url = urlsplit(text.strip())
        if url.password is not None:
            return repr(text.strip().replace(f":{url.password}@", ":***@", 1))
    except ValueError:
        if "@" in text:
            return "the URL"
    return repr(text.strip())


def read_credentials(spec: str) -> tuple[str, str]:
    """``@FILE`` holding ``USER:PASS`` (one line) -> (user, password).

    Raises:
        ValueError: not ``@FILE``, unreadable, or not USER:PASS.
    """
    if not spec.startswith("@"):
        raise ValueError("takes @FILE, a file holding USER:PASS, so the password stays out of the process "
                         "list (put inline credentials in the --upstream-proxy URL instead)")
    path = Path(spec[1:]).expanduser()
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    line = text.rstrip("\r\n")
    user, sep, password = line.partition(":")
    if not sep or not user or "\n" in line:
        raise ValueError(f"{path} must hold one line USER:PASS")
    return user, password


def parse_bypass_pattern(text: str) -> hosts.HostPattern:
    """An exact name or IP address, or ``*.suffix``."""
    name = hosts.normalize_host(text).strip("[]")
    try:
        return hosts.HostPattern(str(ipaddress.ip_address(name)), False)
    except ValueError:
        return hosts.parse_host_pattern(text)


def parse_routing(url: str, auth: str = "", bypass: Iterable[str] = ()) -> Routing:
    """The three options as one Routing; errors name the option.

    Raises:
        ValueError: the message starts with the flag it is about.
    """
    patterns = []
    for text in bypass:
        try:
            patterns.append(parse_bypass_pattern(text))
        except ValueError as e:
            raise ValueError(f"--upstream-proxy-bypass: {e}") from None
    if not url:
        if auth:
            raise ValueError("--upstream-proxy-auth needs --upstream-proxy")
        return Routing(None, tuple(patterns))
    try:
        spec = parse_proxy_url(url)
    except ValueError as e:
        raise ValueError(f"--upstream-proxy: {e}") from None
    if auth:
        if spec.credentials is not None:
            raise ValueError("give the upstream proxy's credentials once: in the --upstream-proxy URL or "
                             "with --upstream-proxy-auth, not both")
        try:
            spec = spec._replace(credentials=read_credentials(auth))
        except ValueError as e:
            raise ValueError(f"--upstream-proxy-auth: {e}") from None
    return Routing(spec, tuple(patterns))


# -- the CONNECT handshake, shared with the token transport ------------------------------------------


def connect_request(target: Address, proxy: ProxySpec, extra: Iterable[tuple[str, str]] = ()) -> http.Request:
    """The CONNECT request for ``target`` (authority-form; IPv6 bracketed, names IDNA-encoded)."""
    host, port = target
    try:
        ipaddress.ip_address(host)
        host_text = host
    except ValueError:
        host_text = host.encode("idna").decode("ascii")
    authority = format_authority(host_text, port)
    headers = http.Headers(host=authority)
    auth = proxy.proxy_authorization()
    if auth is not None:
        headers["Proxy-Authorization"] = auth
    for name, value in extra:
        headers[name] = value
    now = time.time()
    return http.Request(host=host, port=port, method=b"CONNECT", scheme=b"", authority=authority.encode(),
                        path=b"", http_version=b"HTTP/1.1", headers=headers, content=b"", trailers=None,
                        timestamp_start=now, timestamp_end=now)


def connect_bytes(target: Address, proxy: ProxySpec) -> bytes:
    """The CONNECT request for ``target`` on the wire, with the proxy's credentials if it has any."""
    return http1.assemble_request(connect_request(target, proxy))


def check_connect_response(head: Sequence[bytes], proxy: ProxySpec, target: Address) -> None:
    """Raise unless ``head`` (the answer's lines) is a 2xx to our CONNECT.

    Raises:
        UpstreamProxyError: the message names the upstream proxy and says what it answered.
    """
    where = f"the upstream proxy {proxy}"
    what = format_authority(*target)
    try:
        response = http1.read_response_head(list(head))
    except ValueError:
        raise UpstreamProxyError(f"{where} answered CONNECT to {what} with something that is not HTTP") from None
    if not 200 <= response.status_code < 300:
        hint = " (check the --upstream-proxy credentials)" if response.status_code == 407 else ""
        reason = _printable(response.reason)
        raise UpstreamProxyError(
            f"{where} refused CONNECT to {what}: {response.status_code} {reason}".rstrip() + hint)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:100]


def head_end(data: bytes | bytearray) -> int | None:
    """Where a response head (up to and including its blank line) ends in ``data``, if it does."""
    match = _HEAD_END.search(data)
    return match.end() if match else None


def split_head(data: bytes | bytearray) -> tuple[list[bytes] | None, bytes]:
    """(the lines of a complete response head, the bytes after it), or (None, b"") while incomplete."""
    match = _HEAD_END.search(data)
    if match is None:
        return None, b""
    return _LINE_END.split(bytes(data[:match.start()])), bytes(data[match.end():])


def not_http(data: bytes | bytearray) -> bool:
    """The first bytes of an answer already show it is not an HTTP response."""
    start = bytes(data[:5])
    return not b"HTTP/".startswith(start) if len(start) < 5 else start != b"HTTP/"


# -- the layer -----------------------------------------------------------------------------------------


class _Tunnel:
    """One server connection routed through the upstream proxy.

    States: hooks (server_connect runs), dialing (to the upstream proxy), asking
    (http_connect_upstream runs), handshake (CONNECT sent), open, closed (failed or given up).
    (A plain class: ``mitmdump -s`` loads this file outside sys.modules, where dataclasses fail.)
    """

    def __init__(self, inner: connection.Server, opening: commands.OpenConnection, proxy: ProxySpec) -> None:
        self.inner = inner  # what the layers beneath see
        self.opening = opening  # their request, answered once the tunnel is up (or not)
        self.proxy = proxy
        self.carrier: connection.Server | None = None  # our connection to the upstream proxy
        self.target: Address | None = None
        self.state = "hooks"
        self.buf = bytearray()

    @property
    def what(self) -> str:
        return format_authority(*self.target) if self.target else "the server"


class _Tunnels(layer.Layer):
    """Sits above one client connection's HTTP layer and tunnels the server connections it opens.

    Events for our connections to the upstream proxy never reach the layers beneath (they do not
    know those connections); theirs for a tunnelled connection are translated both ways.
    """

    child_layer: layer.Layer

    def __init__(self, context: Any, child: layer.Layer, owner: UpstreamProxy) -> None:
        super().__init__(context)
        # Above the layer it wraps, in mitmproxy's list too (HttpStream finds its HttpLayer by position).
        context.layers.remove(self)
        context.layers.insert(context.layers.index(child), self)
        self.child_layer = child
        self.owner = owner
        self.by_inner: dict[connection.Server, _Tunnel] = {}
        self.by_carrier: dict[connection.Server, _Tunnel] = {}
        # Our own commands, answered by events: id -> (command, tunnel, what it was).
        self.asked: dict[int, tuple[commands.Command, _Tunnel, str]] = {}

    def __repr__(self) -> str:
        return f"UpstreamTunnels({len(self.by_inner)})"

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.CommandCompleted):
            asked = self.asked.get(id(event.command))
            if asked is not None and asked[0] is event.command:
                del self.asked[id(event.command)]
                yield from self._answered(asked[1], asked[2], event)
                return
        if isinstance(event, events.ConnectionEvent):
            tunnel = self.by_carrier.get(event.connection)  # type: ignore[call-overload]
            if tunnel is not None:
                yield from self._from_carrier(tunnel, event)
                return
        yield from self._to_child(event)

    # -- beneath us --------------------------------------------------------------------------------------

    def _to_child(self, event: events.Event) -> layer.CommandGenerator[None]:
        for command in self.child_layer.handle_event(event):
            yield from self._from_child(command)

    def _from_child(self, command: commands.Command) -> layer.CommandGenerator[None]:
        if isinstance(command, commands.OpenConnection):
            yield from self._open(command)
            return
        tunnel = None
        if isinstance(command, commands.ConnectionCommand) and isinstance(command.connection, connection.Server):
            tunnel = self.by_inner.get(command.connection)
        if tunnel is None:
            yield command
        elif isinstance(command, commands.SendData):
            if tunnel.state == "open" and tunnel.carrier is not None:
                yield commands.SendData(tunnel.carrier, command.data)
        elif isinstance(command, commands.CloseConnection):
            half = isinstance(command, commands.CloseTcpConnection) and command.half_close
            if tunnel.state != "open":
                if tunnel.state != "closed":  # given up while connecting: as a direct connection would
                    yield from self._failed(tunnel, "connection closed", upstream=False)
                return
            if half:
                tunnel.inner.state &= ~connection.ConnectionState.CAN_WRITE
            else:
                tunnel.inner.state = connection.ConnectionState.CLOSED
            assert tunnel.carrier is not None
            yield commands.CloseTcpConnection(tunnel.carrier, half_close=half)
            self._forget_if_done(tunnel)
        else:
            yield command

    def _open(self, command: commands.OpenConnection) -> layer.CommandGenerator[None]:
        inner = command.connection
        proxy = self.owner.route(self.context.client, inner)
        if proxy is None:
            yield command  # direct: mitmproxy connects and runs the server_connect hooks itself
            return
        tunnel = _Tunnel(inner, command, proxy)
        self.by_inner[inner] = tunnel
        # While the hooks run, via says the address is asked of the upstream proxy, not dialled.
        inner.via = ("http", proxy.address)
        yield from self._ask(server_hooks.ServerConnectHook(self._hook_data(inner)), tunnel, "server_connect")

    def _hook_data(self, server: connection.Server) -> server_hooks.ServerConnectionHookData:
        return server_hooks.ServerConnectionHookData(server=server, client=self.context.client)

    def _ask(self, command: commands.Command, tunnel: _Tunnel, what: str) -> layer.CommandGenerator[None]:
        """Issue a command whose answer arrives as an event, without pausing the whole connection."""
        command.blocking = self  # not True: neither we nor the layers above wait for it
        self.asked[id(command)] = (command, tunnel, what)
        yield command

    # -- answers to our own commands ---------------------------------------------------------------------

    def _answered(self, tunnel: _Tunnel, what: str, event: events.CommandCompleted) -> layer.CommandGenerator[None]:
        if what == "server_connect":
            yield from self._hooks_done(tunnel)
        elif what == "dial":
            yield from self._dialled(tunnel, event.reply)
        elif what == "connect_upstream":
            if tunnel.state == "asking" and tunnel.carrier is not None:
                assert isinstance(event.command, HttpConnectUpstreamHook)
                tunnel.state = "handshake"
                yield commands.SendData(tunnel.carrier, http1.assemble_request(event.command.flow.request))
                timeout = self.owner.handshake_timeout(self.context.options)
                if timeout > 0:
                    yield from self._ask(commands.RequestWakeup(timeout), tunnel, "timeout")
        elif what == "timeout" and tunnel.state == "handshake":
            seconds = self.owner.handshake_timeout(self.context.options)
            yield from self._failed(tunnel, f"the upstream proxy {tunnel.proxy} timed out: no answer to "
                                            f"CONNECT to {tunnel.what} within {seconds:g} s", timeout=True)
        # server_connected, server_connect_error: nothing waits for them

    def _hooks_done(self, tunnel: _Tunnel) -> layer.CommandGenerator[None]:
        inner = tunnel.inner
        inner.via = None  # mitmproxy's HTTP layer must not stack its own upstream-proxy layer on it
        if tunnel.state != "hooks":
            return
        if inner.error:  # the metadata guard, or another addon, killed it
            yield from self._failed(tunnel, f"Connection killed: {inner.error}", upstream=False)
            return
        assert inner.address is not None
        tunnel.target = (inner.address[0], inner.address[1])
        tunnel.carrier = connection.Server(address=tunnel.proxy.address)
        self.by_carrier[tunnel.carrier] = tunnel
        self.owner.carried[inner] = Carried(tunnel.carrier, tunnel.proxy, tunnel.target)
        tunnel.state = "dialing"
        yield from self._ask(commands.OpenConnection(tunnel.carrier), tunnel, "dial")

    def _dialled(self, tunnel: _Tunnel, err: str | None) -> layer.CommandGenerator[None]:
        assert tunnel.carrier is not None and tunnel.target is not None
        if err:
            self.by_carrier.pop(tunnel.carrier, None)  # never opened: no close event will come
            if tunnel.state == "dialing":
                yield from self._failed(tunnel, f"the upstream proxy {tunnel.proxy} could not be reached: {err}")
            return
        if tunnel.state != "dialing":  # given up meanwhile
            yield commands.CloseConnection(tunnel.carrier)
            return
        flow = http.HTTPFlow(self.context.client, tunnel.carrier)
        flow.request = connect_request(tunnel.target, tunnel.proxy._replace(credentials=None))
        flow.metadata[METADATA_KEY] = True
        tunnel.state = "asking"
        yield from self._ask(HttpConnectUpstreamHook(flow), tunnel, "connect_upstream")

    # -- the upstream proxy's connection -----------------------------------------------------------------

    def _from_carrier(self, tunnel: _Tunnel, event: events.ConnectionEvent) -> layer.CommandGenerator[None]:
        inner = tunnel.inner
        if isinstance(event, events.DataReceived):
            if tunnel.state == "open":
                yield from self._to_child(events.DataReceived(inner, event.data))
            elif tunnel.state == "handshake":
                yield from self._handshake_data(tunnel, event.data)
        elif isinstance(event, events.ConnectionClosed):
            # mitmproxy sends one close event per connection; after it the carrier is ours no more.
            carrier = event.connection
            self.by_carrier.pop(carrier, None)  # type: ignore[call-overload]
            if tunnel.state == "open":
                if carrier.state & connection.ConnectionState.CAN_WRITE:
                    inner.state &= ~connection.ConnectionState.CAN_READ
                else:
                    inner.state = connection.ConnectionState.CLOSED
                inner.timestamp_end = time.time()
                yield from self._to_child(events.ConnectionClosed(inner))
            elif tunnel.state in ("asking", "handshake"):
                yield from self._failed(tunnel, f"the upstream proxy {tunnel.proxy} closed the connection before "
                                                f"answering CONNECT to {tunnel.what}")
            self._forget_if_done(tunnel)

    def _handshake_data(self, tunnel: _Tunnel, data: bytes) -> layer.CommandGenerator[None]:
        assert tunnel.target is not None
        tunnel.buf += data
        head, rest = split_head(tunnel.buf)
        if head is None:
            if not_http(tunnel.buf) or len(tunnel.buf) > MAX_CONNECT_RESPONSE:
                yield from self._failed(tunnel, f"the upstream proxy {tunnel.proxy} answered CONNECT to "
                                                f"{tunnel.what} with something that is not HTTP")
            return
        try:
            check_connect_response(head, tunnel.proxy, tunnel.target)
        except UpstreamProxyError as e:
            yield from self._failed(tunnel, str(e))
            return
        tunnel.buf = bytearray()
        tunnel.state = "open"
        inner = tunnel.inner
        inner.state = connection.ConnectionState.OPEN
        inner.timestamp_start = inner.timestamp_tcp_setup = time.time()
        logger.debug("tunnel to %s through the upstream proxy %s is open", tunnel.what, tunnel.proxy)
        yield from self._ask(server_hooks.ServerConnectedHook(self._hook_data(inner)), tunnel, "server_connected")
        yield from self._to_child(events.OpenConnectionCompleted(tunnel.opening, None))
        if rest:
            yield from self._to_child(events.DataReceived(inner, rest))

    def _failed(self, tunnel: _Tunnel, message: str, *, upstream: bool = True,
                timeout: bool = False) -> layer.CommandGenerator[None]:
        """The tunnel will not open: tell the layer beneath, in words that name the upstream proxy."""
        inner = tunnel.inner
        inner.via = None
        inner.error = message
        inner.state = connection.ConnectionState.CLOSED
        tunnel.state = "closed"
        if upstream:
            logger.warning("%s", message)
            self.owner.failures[inner] = UpstreamProxyError(message, timeout=timeout or "timed out" in message)
        if tunnel.carrier is not None and tunnel.carrier in self.by_carrier:
            # Its close event (or, while dialling, its failed open) still comes to us.
            yield commands.CloseConnection(tunnel.carrier)
        self._forget_if_done(tunnel)
        yield from self._ask(server_hooks.ServerConnectErrorHook(self._hook_data(inner)), tunnel,
                             "server_connect_error")
        yield from self._to_child(events.OpenConnectionCompleted(tunnel.opening, message))

    def _forget_if_done(self, tunnel: _Tunnel) -> None:
        """Drop the tunnel once neither side can use it (the carrier's close event has been seen)."""
        carrier_gone = tunnel.carrier is None or tunnel.carrier not in self.by_carrier
        done = tunnel.state == "closed" or (carrier_gone and tunnel.inner.state is connection.ConnectionState.CLOSED)
        if done and self.by_inner.get(tunnel.inner) is tunnel:
            del self.by_inner[tunnel.inner]


# -- the component -------------------------------------------------------------------------------------


class UpstreamProxy:
    """Routes every upstream connection through ``--upstream-proxy`` (see the module docstring).

    ``tokens``: the TokenSource whose fetches take the same route (the composition root hands it
    over; ``mitmdump -s addons/upstream_proxy.py`` alone routes only the proxied traffic).
    """

    def __init__(self, tokens: TokenSource | TokenSources | None = None) -> None:
        self.tokens = tokens
        self.routing = Routing()
        # The CONNECT target each client connection asked for (before --resolve): bypass decides on it.
        self.tunnel_names: MutableMapping[connection.Client, str] = weakref.WeakKeyDictionary()
        # Why a routed connection failed, for the CONNECT error page.
        self.failures: MutableMapping[connection.Server, UpstreamProxyError] = weakref.WeakKeyDictionary()
        # A tunnelled connection -> how it is carried: the read timeout (addons/limits.py) closes
        # the carrier, the 401 replay (addons/replay.py) goes the same way again.
        self.carried: MutableMapping[connection.Server, Carried] = weakref.WeakKeyDictionary()

    def load(self, loader: Any) -> None:
        options.declare(loader, "upstream_proxy", "upstream_proxy_auth", "upstream_proxy_bypass")

    def configure(self, updated: set[str]) -> None:
        if updated & {"upstream_proxy", "upstream_proxy_auth", "upstream_proxy_bypass"}:
            try:
                self.routing = parse_routing(ctx.options.upstream_proxy, ctx.options.upstream_proxy_auth,
                                             ctx.options.upstream_proxy_bypass)
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            if self.tokens is not None:
                self.tokens.set_routing(self.routing)

    def running(self) -> None:
        proxy = self.routing.proxy
        if proxy is not None:
            bypass = f", except {', '.join(str(p) for p in self.routing.bypass)}" if self.routing.bypass else ""
            logger.info("every upstream connection goes through the upstream proxy %s%s", proxy, bypass)

    @staticmethod
    def handshake_timeout(opts: Any) -> float:
        """How long the upstream proxy may take to answer CONNECT: ``--connect-timeout`` (0: no limit)."""
        if "connect_timeout" in opts:
            return float(opts.connect_timeout)
        return DEFAULT_HANDSHAKE_TIMEOUT

    def route(self, client: connection.Client, server: connection.Server) -> ProxySpec | None:
        """The proxy this server connection goes through, or None for a direct connection."""
        if self.routing.proxy is None or server.address is None:
            return None
        return self.routing.via(self.tunnel_names.get(client) or server.address[0])

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        context = nextlayer.context
        child = nextlayer.layer
        if (
            self.routing.proxy is not None
            and isinstance(child, layers.HttpLayer)
            and child.mode is HTTPMode.regular
            and isinstance(context.client.proxy_mode, mode_specs.RegularMode)
        ):
            nextlayer.layer = _Tunnels(context, child, self)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.routing.proxy is not None:
            self.tunnel_names[flow.client_conn] = flow.request.host

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        proxy = self.routing.proxy
        if flow.metadata.get(METADATA_KEY) and proxy is not None:
            auth = proxy.proxy_authorization()
            if auth is not None:
                flow.request.headers["Proxy-Authorization"] = auth

    def http_connect_error(self, flow: http.HTTPFlow) -> None:
        """A CONNECT that failed at the upstream proxy: say so, instead of the generic page."""
        failure = self.failures.get(flow.server_conn)
        if failure is None:
            return
        status = 504 if failure.timeout else 502
        flow.response = error_response(
            status, f"gcp-auth-proxy could not reach {flow.request.pretty_host}: {failure}",
            "upstreamProxyTimeout" if failure.timeout else "upstreamProxyError", request=flow.request)


addons = [UpstreamProxy()]
