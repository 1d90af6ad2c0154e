"""The only code that uses mitmproxy's Master/Options API (not a documented stable interface).

Runs mitmproxy in our process with a minimal, explicit addon list: no flow dumper (it could
print headers), no script loader, no web or console UI.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mitmproxy import ctx, log, master, options
from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig

from addons import default_addons, hosts
from proxy import trust
from proxy.errors import ExitStatus, ProxyError
from proxy.settings import Settings

logger = logging.getLogger(__name__)

Address = tuple[str, int]
# Bodies above this stream through (flat memory); smaller ones are buffered, so a request whose
# token was rejected (401) can be replayed once with a fresh token.
STREAM_THRESHOLD = "1m"


def mitmproxy_options(settings: Settings, upstream_bundle: Path | None) -> dict[str, Any]:
    """Settings -> mitmproxy option values (ours and mitmproxy's own)."""
    patterns = [hosts.parse_host_pattern(p) for p in settings.inject_hosts]
    return {
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        "confdir": str(settings.confdir),
        # Intercept TLS only for hosts we inject for; everything else is tunnelled untouched.
        "allow_hosts": [hosts.allow_hosts_regex(p) for p in patterns],
        "ssl_verify_upstream_trusted_ca": str(upstream_bundle) if upstream_bundle else None,
        "stream_large_bodies": STREAM_THRESHOLD,
        "proxy_auth": settings.proxy_auth or "",
        "policy_allow_metadata": settings.allow_metadata,
        "upstream_resolve": list(settings.resolve),
        "gauth_hosts": list(settings.inject_hosts),
        "gauth_scopes": list(settings.scopes),
        "gauth_client_auth": settings.client_auth,
        "audit_log": settings.audit_log or "",
        "admin_listen": settings.admin_listen or "",
        "policy_allow_hosts": list(settings.allow_hosts),
        "tcp_timeout": max(1, round(settings.idle_timeout)),
        "limits_max_connections": settings.max_connections,
        "limits_max_header_size": settings.max_header_size,
        "limits_header_timeout": settings.header_timeout,
        "limits_connect_timeout": settings.connect_timeout,
        "limits_read_timeout": settings.read_timeout,
    }


def mitmproxy_addons() -> list[Any]:
    """mitmproxy's own addons we need, then ours (see addons.default_addons for their order)."""
    return [
        core.Core(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
    ]


def selected_addons(settings: Settings) -> list[Any]:
    """Our addons minus the ones this configuration leaves idle.

    mitmproxy dispatches every hook to every addon that defines it, so an idle addon still costs
    CPU on every request (measured: 13 -> 7 addons saves 8-30 % of proxy CPU per request).
    """
    idle: set[str] = set()
    # ProxyAuth stays loaded even without --proxy-auth: it strips Proxy-Authorization from every
    # request, which must never reach an upstream.
    if not settings.admin_listen:
        idle |= {"Metrics", "Admin"}
    return [a for a in default_addons() if type(a).__name__ not in idle]


class _Startup(log.MitmLogHandler):
    """Collects error logs until the listener is up, so a failed bind becomes one clear sentence."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record.getMessage())


class _Ready:
    """Reports the real listen addresses once mitmproxy is serving (port 0 becomes a number)."""

    def __init__(self, on_ready: Callable[[list[Address]], None] | None, startup: _Startup) -> None:
        self.on_ready = on_ready
        self.startup = startup
        self.addresses: list[Address] = []
        self.failure: str | None = None

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        self.addresses = [(a[0], a[1]) for a in server.listen_addrs()]
        self.startup.uninstall()
        if not self.addresses:
            self.failure = "; ".join(self.startup.errors) or "the proxy did not start listening"
            ctx.master.shutdown()
            return
        if self.on_ready is not None:
            self.on_ready(self.addresses)


async def run_proxy(
    settings: Settings,
    *,
    on_ready: Callable[[list[Address]], None] | None = None,
    install_signal_handlers: bool = True,
    started: Callable[[master.Master], None] | None = None,
    extra_options: Mapping[str, Any] | None = None,
) -> None:
    """Serve until shutdown (SIGINT/SIGTERM, or ``master.shutdown()`` via ``started``).

    Raises:
        ProxyError: when the proxy cannot start (bad option, port in use).
    """
    ca_cert = trust.ensure_ca(settings.confdir)
    upstream = trust.upstream_bundle(settings.confdir, settings.upstream_ca)
    startup = _Startup()
    startup.install()
    opts = options.Options()
    m = master.Master(opts, event_loop=asyncio.get_running_loop())
    ready = _Ready(on_ready, startup)
    m.addons.add(*mitmproxy_addons(), *selected_addons(settings), ready)
    values = {**mitmproxy_options(settings, upstream), **(extra_options or {})}
    try:
        # extra_options: per-run values that are not settings (e.g. `run`'s placeholder tokens).
        # Options of addons left out by selected_addons() do not exist: their values are unset.
        opts.update(**{k: v for k, v in values.items() if k in opts})
    except Exception as e:  # noqa: BLE001 - OptionsError and friends from an addon's configure()
        startup.uninstall()
        raise ProxyError(f"invalid configuration: {e}") from None
    logger.debug("CA certificate: %s", ca_cert)

    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        # First signal drains for --shutdown-grace seconds, a second one exits at once.
        from proxy.shutdown import GracefulShutdown

        GracefulShutdown(m, settings.shutdown_grace).install(loop)
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, _reopen_logs, m)
    if started is not None:
        started(m)
    try:
        await m.run()
    finally:
        startup.uninstall()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
    if ready.failure:
        raise ProxyError(f"cannot start the proxy: {ready.failure}", ExitStatus.UNAVAILABLE)


def _reopen_logs(m: master.Master) -> None:
    audit = m.addons.get("auditlog")
    if audit is not None:
        audit.reopen()
        logger.info("reopened the audit log")
