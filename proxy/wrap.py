"""``run -- CMD``: the child's environment (pure ``child_env``) and running it next to the proxy.

The child gets a copy of our environment plus the proxy and CA variables each client family
reads; our own process never takes them. Signals are forwarded, the child's exit status is
returned unchanged (128+N when signal N killed it), and the proxy shuts down when the child exits.
With ``--isolate`` the child runs in its own network namespace whose loopback leads only to the
proxy and the placeholder endpoint (proxy/isolate.py); its environment is the same.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mitmproxy.master import Master

from addons import same_user
from proxy import isolate, trust
from proxy.errors import ExitStatus, ProxyError
from proxy.settings import Settings

logger = logging.getLogger(__name__)

# Set in every child; its value is the proxy URL. A `run` inside a `run` (or inside a shell
# pointed at `serve` with `env`) reuses that proxy instead of starting another.
MARKER = "GCP_AUTH_PROXY_RUN"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "grpc_proxy")
# Each of these *replaces* the client's trusted roots, so it gets public roots + the proxy CA.
CA_BUNDLE_VARIABLES = (
    "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE", "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "HTTPLIB2_CA_CERTS",
)
METADATA_VARIABLES = ("GCE_METADATA_HOST", "GCE_METADATA_IP", "GCE_METADATA_ROOT")
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass(frozen=True)
class ChildTrust:
    """Certificate files for the child: only certificates, never the CA key."""

    bundle: str  # public roots + the user's own CA files + the proxy CA
    node_extra: str  # what NODE_EXTRA_CA_CERTS adds to Node's built-in roots


def merge_no_proxy(base: Mapping[str, str]) -> str:
    """The user's NO_PROXY (either case) plus loopback, without duplicates, order kept."""
    raw = base.get("NO_PROXY") or base.get("no_proxy") or ""
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    for host in LOOPBACK:
        if host not in entries:
            entries.append(host)
    return ",".join(entries)


def boto_path(base: Mapping[str, str], ours: str) -> str:
    """BOTO_PATH reading the user's boto files first and ours last (later files win in boto)."""
    if base.get("BOTO_CONFIG"):
        user = [base["BOTO_CONFIG"]]
    elif base.get("BOTO_PATH"):
        user = [p for p in base["BOTO_PATH"].split(os.pathsep) if p]
    else:  # boto's defaults, which BOTO_PATH would otherwise switch off
        user = ["/etc/boto.cfg"] + ([f"{base['HOME']}/.boto"] if base.get("HOME") else [])
    return os.pathsep.join([*user, ours])


def boto_config(proxy_url: str, ca_file: str) -> str:
    """A boto config section sending gsutil through the proxy and trusting its CA."""
    url = urlsplit(proxy_url)
    return (
        "[Boto]\n"
        f"proxy = {url.hostname}\n"
        f"proxy_port = {url.port}\n"
        "proxy_type = http\n"
        "proxy_rdns = True\n"
        f"ca_certificates_file = {ca_file}\n"
        "https_validate_certificates = True\n"
    )


def fsspec_gcs(current: str | None) -> str:
    """FSSPEC_GCS JSON with aiohttp ``trust_env`` on (gcsfs ignores proxy variables otherwise)."""
    try:
        config = json.loads(current) if current else {}
    except ValueError:
        config = {}
    if not isinstance(config, dict):
        config = {}
    session = config.get("session_kwargs")
    config["session_kwargs"] = {**(session if isinstance(session, dict) else {}), "trust_env": True}
    return json.dumps(config, sort_keys=True)


def child_env(
    base: Mapping[str, str],
    proxy_url: str,
    ca: ChildTrust,
    *,
    boto_file: str | None = None,
    metadata_host: str | None = None,
) -> dict[str, str]:
    """The child's environment: a copy of ``base`` plus proxy, CA and (optionally) metadata variables.

    Pure: ``base`` is not modified and nothing is read from the process environment.

    Args:
        proxy_url: ``http://127.0.0.1:PORT`` of the running proxy.
        ca: certificate files the child should trust.
        boto_file: a boto config (see ``boto_config``) layered over the user's for gsutil.
        metadata_host: ``HOST:PORT`` of the placeholder metadata endpoint; None leaves the
            child's credential discovery alone.
    """
    env = dict(base)
    for name in PROXY_VARIABLES:
        env[name] = proxy_url
    env["NO_PROXY"] = env["no_proxy"] = merge_no_proxy(base)
    for name in CA_BUNDLE_VARIABLES:
        env[name] = ca.bundle
    env["NODE_EXTRA_CA_CERTS"] = ca.node_extra
    env["NODE_USE_ENV_PROXY"] = "1"  # Node >= 24 fetch/http honour the proxy variables with this
    url = urlsplit(proxy_url)
    # gcloud reads its proxy from properties, settable as CLOUDSDK_<SECTION>_<NAME>.
    env["CLOUDSDK_PROXY_TYPE"] = "http"
    env["CLOUDSDK_PROXY_ADDRESS"] = url.hostname or "127.0.0.1"
    env["CLOUDSDK_PROXY_PORT"] = str(url.port)
    env["FSSPEC_GCS"] = fsspec_gcs(base.get("FSSPEC_GCS"))
    # gcsfs's experimental bucket-type probe goes over gRPC and stalls for a minute when it
    # cannot get through; the user's own choice wins.
    env.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    if boto_file is not None:
        env.pop("BOTO_CONFIG", None)  # boto ignores BOTO_PATH while BOTO_CONFIG is set
        env["BOTO_PATH"] = boto_path(base, boto_file)
    if metadata_host is not None:
        for name in METADATA_VARIABLES:
            env[name] = metadata_host
        # The child must find the placeholder endpoint, not real credentials of its own.
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        env.pop("NO_GCE_CHECK", None)
    env[MARKER] = proxy_url
    return env


def env_changes(base: Mapping[str, str], env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(variables set or changed, variables removed) going from ``base`` to ``env``."""
    changed = {k: v for k, v in env.items() if base.get(k) != v}
    removed = sorted(k for k in base if k not in env)
    return changed, removed


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: the code itself, or 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def user_ca_files(base: Mapping[str, str]) -> list[Path]:
    """CA files the user's environment already trusts, kept trusted in the child (first seen order)."""
    seen: list[Path] = []
    for name in CA_BUNDLE_VARIABLES:
        value = base.get(name)
        if value:
            path = Path(value)
            if path not in seen and path.is_file():
                seen.append(path)
    return seen


def _certificates(paths: Sequence[Path]) -> bytes:
    out = b""
    for path in paths:
        try:
            with warnings.catch_warnings():  # system bundles hold old roots cryptography frowns on
                warnings.simplefilter("ignore")
                out += trust.read_pem_certificates(path, "CA file")
        except ProxyError as e:  # a broken user CA file breaks their clients anyway; ours go on
            logger.debug("not adding %s to the child's CA bundle: %s", path, e)
    return out


def prepare_trust(
    base: Mapping[str, str], confdir: Path, ca_cert: Path, upstream_ca: Path | None, outdir: Path,
) -> ChildTrust:
    """Write the child's CA files into ``outdir`` (the plain client bundle lives in ``confdir``)."""
    extra = [*user_ca_files(base), *([upstream_ca] if upstream_ca else [])]
    proxy_ca = trust.read_pem_certificates(ca_cert, "proxy CA certificate")
    if extra:
        data = trust.public_roots().rstrip(b"\n") + b"\n" + _certificates(extra) + proxy_ca
        bundle = trust.write_if_changed(outdir / "ca-bundle.pem", data)
    else:
        bundle = trust.client_bundle(confdir, ca_cert)
    node_user = [Path(base["NODE_EXTRA_CA_CERTS"])] if base.get("NODE_EXTRA_CA_CERTS") else []
    node_user = [p for p in node_user if p.is_file()]
    node_extra = ca_cert
    if node_user or upstream_ca:
        data = _certificates([*node_user, *([upstream_ca] if upstream_ca else [])]) + proxy_ca
        node_extra = trust.write_if_changed(outdir / "node-extra-ca.pem", data)
    return ChildTrust(bundle=str(bundle), node_extra=str(node_extra))


def proxy_url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def run_child(argv: Sequence[str], env: Mapping[str, str], *,
                    fence: Sequence[tuple[str, int]] | None = None) -> int:
    """Run ``argv`` with ``env``, forwarding signals; returns its status (128+N if killed by N).

    Signal handlers go in before the child is spawned, so a signal that arrives while it starts
    is delivered to it as soon as it exists rather than killing us.

    Args:
        fence: run it isolated (``--isolate``), with these loopback addresses forwarded.

    Raises:
        ProxyError: the command could not be started (127 not found, 126 not executable; 69 the
            kernel refused the namespaces).
    """
    loop = asyncio.get_running_loop()
    proc: asyncio.subprocess.Process | None = None
    isolated: isolate.Fence | None = None
    pending: list[signal.Signals] = []

    def forward(sig: signal.Signals) -> None:
        if proc is None:
            pending.append(sig)
        elif proc.returncode is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, forward, sig)
    try:
        try:
            if fence is not None:
                isolated = await isolate.spawn(argv, dict(env), fence)
                proc = isolated.proc
            else:
                proc = await asyncio.create_subprocess_exec(*argv, env=dict(env))
        except FileNotFoundError:
            raise ProxyError(f"cannot run {argv[0]}: command not found", ExitStatus.NOTFOUND) from None
        except PermissionError:
            raise ProxyError(f"cannot run {argv[0]}: permission denied", ExitStatus.NOEXEC) from None
        except OSError as e:
            raise ProxyError(f"cannot run {argv[0]}: {e.strerror}", ExitStatus.NOEXEC) from None
        for sig in pending:
            forward(sig)
        return exit_status(await proc.wait())
    finally:
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)
        if isolated is not None:
            await isolated.close()


def fence_addresses(proxy: tuple[str, int], metadata_host: str | None) -> list[tuple[str, int]]:
    """The loopback addresses an isolated child needs: the proxy, and the placeholder endpoint.

    Raises:
        ProxyError: the proxy listens elsewhere than on loopback (the namespace has nothing else).
    """
    addresses = [proxy]
    if metadata_host is not None:
        host, _, port = metadata_host.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    for host, _port in addresses:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ProxyError(f"--isolate needs the proxy on a loopback address, not {host} (see --listen)")
    return addresses


async def run_wrapped(
    settings: Settings,
    argv: Sequence[str],
    base: Mapping[str, str],
    *,
    placeholder: bool = True,
    on_env: Callable[[Mapping[str, str]], None] | None = None,
    isolated: bool = False,
) -> int:
    """Start the proxy (and the placeholder metadata endpoint), run ``argv``, shut both down.

    ``isolated``: run it in a network namespace of its own (``--isolate``, proxy/isolate.py).
    """
    from proxy import embed
    from proxy import placeholder as ph

    if isolated and (why_not := isolate.supported()):
        raise ProxyError(why_not, ExitStatus.UNAVAILABLE)
    loop = asyncio.get_running_loop()
    # Until the child runs, a signal stops us cleanly (the child does not exist yet).
    stop = asyncio.Event()
    received: list[int] = []

    def stop_starting(sig: signal.Signals) -> None:
        received.append(sig)
        stop.set()

    for sig in FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, stop_starting, sig)
    workdir = Path(tempfile.mkdtemp(prefix="gcp-auth-proxy-run-"))
    masters: list[Master] = []
    ready: asyncio.Future[list[tuple[str, int]]] = loop.create_future()
    metadata_server: asyncio.Server | None = None
    proxy_task: asyncio.Task[None] | None = None
    try:
        ca_cert = trust.ensure_ca(settings.confdir)
        ca = prepare_trust(base, settings.confdir, ca_cert, settings.upstream_ca, workdir)
        extra: dict[str, object] = {}
        if placeholder:
            token = ph.new_placeholder()
            extra["placeholder_tokens"] = [token]
            # The same uid rule as the proxy port: only this user (and --allow-uid) may ask.
            gate = same_user.Gate(same_user.parse_allow_uid(settings.allow_uid))
            metadata_server = await ph.serve_metadata(ph.Identity(token, ph.default_project(base)), gate=gate)

        def on_ready(addresses: list[tuple[str, int]]) -> None:
            if not ready.done():
                ready.set_result(addresses)

        proxy_task = asyncio.create_task(embed.run_proxy(
            settings, on_ready=on_ready, install_signal_handlers=False, started=masters.append,
            extra_options=extra,
        ))
        stopped = asyncio.ensure_future(stop.wait())
        waiting: set[asyncio.Future[object]] = {proxy_task, ready, stopped}  # type: ignore[arg-type]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not ready.done():
            if proxy_task.done():
                proxy_task.result()  # raises the ProxyError that explains why
                raise ProxyError("the proxy stopped before it was ready", ExitStatus.UNAVAILABLE)
            return 128 + received[0]  # interrupted while starting, as if the child had been
        host, port = ready.result()[0]
        url = proxy_url_for(host, port)
        boto = workdir / "boto.cfg"
        boto.write_text(boto_config(url, ca.bundle))
        metadata_host = ph.server_address(metadata_server) if metadata_server else None
        env = child_env(base, url, ca, boto_file=str(boto), metadata_host=metadata_host)
        fence = fence_addresses((host, port), metadata_host) if isolated else None
        if on_env is not None:
            on_env(env)
        if received:
            return 128 + received[0]
        return await run_child(argv, env, fence=fence)  # replaces the start-up signal handlers with its own
    finally:
        for sig in FORWARDED_SIGNALS:
            loop.remove_signal_handler(sig)
        if masters:
            masters[0].shutdown()
        if proxy_task is not None:
            if not masters:
                proxy_task.cancel()
            try:
                await proxy_task
            except (asyncio.CancelledError, ProxyError):
                pass
        if metadata_server is not None:
            metadata_server.close()
            await metadata_server.wait_closed()
        shutil.rmtree(workdir, ignore_errors=True)
