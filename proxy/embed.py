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

from addons import composition, hosts, http1_patch
from addons.composition import Components
from addons.pipeline import Pipeline
from addons.policy_file import PolicyError
from addons.policy_model import Policy
from addons.routing import policy_from_options
from proxy import dispatch, trust
from proxy.errors import ExitStatus, ProxyError
from proxy.settings import USER_OPTIONS, Settings

logger = logging.getLogger(__name__)

Address = tuple[str, int]
# addons/streaming.py streams every body but a small request held for the 401 replay (at most
# 64 KiB); mitmproxy's own threshold is the fallback for bodies no addon decided on.
STREAM_THRESHOLD = "64k"
# Our components run as one mitmproxy addon (addons/pipeline.py) under a dispatcher that calls
# only the addons implementing a hook (proxy/dispatch.py). benchmarks/separate_addons.py turns
# both off to measure the design without them.
USE_PIPELINE = True
USE_FAST_DISPATCH = True


def mitmproxy_options(settings: Settings, upstream_bundle: Path | None) -> dict[str, Any]:
    """Settings -> mitmproxy option values. Every name must exist (run_proxy checks).

    Our addons' options carry the setting's own name and value (addons/options.py); the
    program-only settings become mitmproxy's own options here.
    """
    try:
        policy = policy_from_options(settings)
    except PolicyError as e:
        raise ProxyError(str(e)) from None
    ours = {o.name: _option_value(getattr(settings, o.name)) for o in USER_OPTIONS if o.addon}
    if not settings.admin_listen:
        del ours["admin_listen"]  # Admin is not loaded then (see run_proxy)
    return {
        "listen_host": settings.listen_host,
        "listen_port": settings.listen_port,
        "confdir": str(settings.confdir),
        # Intercept TLS only for hosts we inject for; everything else is tunnelled untouched.
        "allow_hosts": intercepted_hosts(policy),
        "ssl_verify_upstream_trusted_ca": str(upstream_bundle) if upstream_bundle else None,
        "stream_large_bodies": STREAM_THRESHOLD,
        "tcp_timeout": max(1, round(settings.idle_timeout)),
        **ours,
    }


def intercepted_hosts(policy: Policy) -> list[str]:
    """mitmproxy's ``allow_hosts`` for this policy: the hosts some route adds a credential for.
    An empty list would mean "intercept everything" to mitmproxy, so no host is a never-matching regex."""
    return [hosts.allow_hosts_regex(p, except_names=policy.untouched) for p in policy.intercepted] or [NO_HOST]


NO_HOST = "(?!)"


def _option_value(value: Any) -> Any:
    """A Settings value as mitmproxy takes it: lists for tuples, "" for unset strings."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    return "" if value is None else value


def mitmproxy_addons(server: proxyserver.Proxyserver) -> list[Any]:
    """mitmproxy's own addons we need (ours follow, see ``Components.ordered``)."""
    return [core.Core(), server, next_layer.NextLayer(), tlsconfig.TlsConfig()]


def our_addons(components: Components) -> list[Any]:
    """Our components as mitmproxy sees them: one pipeline addon, or (to measure) one each."""
    ordered = components.ordered()
    return [Pipeline(ordered)] if USE_PIPELINE else ordered


class _Startup(log.MitmLogHandler):
    """Collects error logs until the listener is up, so a failed bind becomes one clear sentence."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.errors.append(record.getMessage())


class _Ready:
    """Reports the real listen addresses once mitmproxy is serving (port 0 becomes a number)."""

    def __init__(self, on_ready: Callable[[list[Address]], None] | None, startup: _Startup,
                 server: proxyserver.Proxyserver) -> None:
        self.on_ready = on_ready
        self.startup = startup
        self.server = server
        self.addresses: list[Address] = []
        self.failure: str | None = None

    def running(self) -> None:
        self.addresses = [(a[0], a[1]) for a in self.server.listen_addrs()]
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
    http1_patch.install()  # issue 11: head-size cap and JSON error pages; idempotent, before any master
    ca_cert = trust.ensure_ca(settings.confdir)
    upstream = trust.upstream_bundle(settings.confdir, settings.upstream_ca)
    startup = _Startup()
    startup.install()
    opts = options.Options()
    m = master.Master(opts, event_loop=asyncio.get_running_loop())
    if USE_FAST_DISPATCH:
        dispatch.install(m)
    server = proxyserver.Proxyserver()
    # Metrics and admin only cost hook calls when nothing serves them.
    components = composition.build(observability=bool(settings.admin_listen), proxyserver=server)
    ready = _Ready(on_ready, startup, server)
    m.addons.add(*mitmproxy_addons(server), *our_addons(components), ready)
    # extra_options: per-run values that are not settings (e.g. `run`'s placeholder tokens).
    values = {**mitmproxy_options(settings, upstream), **(extra_options or {})}
    unknown = sorted(k for k in values if k not in opts)
    if unknown:  # a misspelt name must not quietly switch a feature (say, the audit log) off
        startup.uninstall()
        raise ProxyError(f"internal error: unknown mitmproxy option(s) {', '.join(unknown)}", ExitStatus.SOFTWARE)
    try:
        opts.update(**values)
    except Exception as e:  # noqa: BLE001 - OptionsError and friends from an addon's configure()
        startup.uninstall()
        raise ProxyError(f"invalid configuration: {e}") from None
    logger.debug("CA certificate: %s", ca_cert)

    loop = asyncio.get_running_loop()
    if install_signal_handlers:
        # First signal drains for --shutdown-grace seconds, a second one exits at once.
        from proxy.shutdown import GracefulShutdown

        GracefulShutdown(m, settings.shutdown_grace, server, components.limits).install(loop)
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, _on_sighup, components, opts)
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


def _on_sighup(components: Components, opts: options.Options) -> None:
    """Reopen the audit log (logrotate) and reload the routes and rules (not the listen address)."""
    if components.audit_log.reopen():  # a refusal already logged why, and traffic stays refused
        logger.info("reopened the audit log")
    if components.routing.reload():  # a failed reload logged why and kept the old policy
        allow = intercepted_hosts(components.routing.policy)
        if list(opts.allow_hosts) != allow:
            opts.update(allow_hosts=allow)
