"""Command line: ``serve``, ``run -- CMD``, ``env``, ``ca``, ``demo``; maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from proxy import runcmd, wrap
from proxy import settings as settings_mod
from proxy.errors import ExitStatus, ProxyError

logger = logging.getLogger(__name__)

# The demo ships with the fake Google, not with the proxy: it runs as its own program and drives
# `python -m proxy` the way a user would, so nothing in proxy/ imports the fake.
DEMO_MODULE = "fakegoogle.demo"
DEMO_NEEDS = ("fakegoogle", "hypercorn", "trustme", "google_crc32c", "google.cloud.storage")
DEMO_CLEANUP_TIMEOUT = 30.0


def _serve_options() -> argparse.ArgumentParser:
    """Options shared by every command that starts a proxy; each has a GCP_AUTH_PROXY_<NAME> variable."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("proxy options (also GCP_AUTH_PROXY_<NAME> environment variables)")
    g.add_argument("--listen", metavar="HOST:PORT",
                   help=f"address to listen on (default {settings_mod.DEFAULT_LISTEN}); "
                        "a non-loopback address needs --proxy-auth")
    g.add_argument("--proxy-auth", metavar="USER:PASS|@FILE",
                   help="require proxy authentication (Basic); @FILE reads an htpasswd file")
    g.add_argument("--confdir", metavar="DIR",
                   help="where the proxy CA lives (default: the user config dir, e.g. ~/.config/gcp-auth-proxy)")
    g.add_argument("--inject-host", action="append", metavar="PATTERN",
                   help="hosts that get a token, exact or *.suffix (repeatable; default *.googleapis.com)")
    g.add_argument("--scopes", action="append", metavar="SCOPE",
                   help="OAuth scopes (repeatable or comma-separated; default cloud-platform)")
    g.add_argument("--resolve", action="append", metavar="PATTERN=ADDR[:PORT]",
                   help="connect upstream for matching hosts to ADDR:PORT, keeping SNI and Host (repeatable)")
    g.add_argument("--upstream-ca", metavar="FILE",
                   help="trust this CA bundle in addition to the public roots for upstream TLS")
    g.add_argument("--audit-log", metavar="PATH", help="append one JSON line per Google API call ('-': stdout)")
    g.add_argument("--admin-listen", metavar="HOST:PORT",
                   help="serve /healthz, /readyz and /metrics here (off by default; loopback unless --proxy-auth)")
    g.add_argument("--client-auth", choices=("keep", "replace", "reject"),
                   help="a request that brings its own Authorization: keep it (default), replace it, or reject it")
    g.add_argument("--allow-metadata", action="store_const", const=True,
                   help="let clients reach the GCE metadata server through the proxy (off by default)")
    g.add_argument("--log-file", metavar="PATH", help="write operational logs here instead of stderr")
    g.add_argument("--log-format", choices=("text", "json"), help="operational log format (default text)")
    g.add_argument("-v", "--verbose", action="store_const", const=True, help="debug logging")
    h = p.add_argument_group("hardening (docs/security.md; 0 turns a timeout off)")
    h.add_argument("--allow-host", action="append", metavar="PATTERN",
                   help="only these hosts may be reached at all, exact or *.suffix (repeatable; default: any)")
    h.add_argument("--max-connections", metavar="N", help="client connections open at once (default 256)")
    h.add_argument("--max-header-size", metavar="BYTES", help="largest request head, e.g. 64k (default 64k)")
    h.add_argument("--header-timeout", metavar="S", help="seconds for a request head to arrive (default 30)")
    h.add_argument("--idle-timeout", metavar="S", help="close connections idle this long (default 600)")
    h.add_argument("--connect-timeout", metavar="S", help="seconds to connect upstream (default 10)")
    h.add_argument("--read-timeout", metavar="S", help="seconds for an upstream to start answering (default 300)")
    h.add_argument("--shutdown-grace", metavar="S",
                   help="on SIGTERM, seconds to let requests in flight finish (default 10)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _serve_options()
    parser = argparse.ArgumentParser(
        prog="gcp-auth-proxy",
        description="An HTTPS proxy that adds Google Application Default Credentials to Google API calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the proxy in the foreground")
    ca = sub.add_parser("ca", help="print the path of the proxy CA certificate (creating it if needed)")
    ca.add_argument("--confdir", metavar="DIR")
    demo = sub.add_parser("demo", help="run a demo against a local fake Google (no account needed)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    runcmd.add_parsers(sub, common)
    audit = sub.add_parser("audit", help="read audit logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    summary = audit_sub.add_parser("summary", help="tables of calls, principals, errors, bytes, slowest calls")
    summary.add_argument("path", metavar="PATH", help="an audit log file, or - for stdin")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.add_argument("--top", type=int, default=10, metavar="N", help="rows in the error and slowest lists")
    return parser


def _settings(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.from_sources(vars(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy import embed, logs

    settings = _settings(args)
    logs.configure_logging(verbose=settings.verbose, log_file=settings.log_file, fmt=settings.log_format)

    def announce(addresses: list[tuple[str, int]]) -> None:
        listen = ", ".join(f"{h}:{p}" for h, p in addresses)
        logger.info("listening on %s; CA certificate %s; injecting tokens for %s; audit log %s",
                    listen, settings.confdir / "mitmproxy-ca-cert.pem", ", ".join(settings.inject_hosts),
                    settings.audit_log or "off")

    asyncio.run(embed.run_proxy(settings, on_ready=announce))
    return ExitStatus.OK


def cmd_audit(args: argparse.Namespace) -> int:
    from proxy import audit_summary

    return audit_summary.main(args.path, as_json=args.json, top=args.top)


def cmd_ca(args: argparse.Namespace) -> int:
    from proxy import trust

    confdir = settings_mod.from_sources({"confdir": args.confdir}).confdir
    print(trust.ensure_ca(confdir))
    return ExitStatus.OK


def _missing_modules(names: Sequence[str]) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None  # imports parent packages only
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


def cmd_demo(args: argparse.Namespace) -> int:
    missing = _missing_modules(DEMO_NEEDS)
    if missing:
        raise ProxyError(
            f"the demo needs the fake Google and its clients ({', '.join(missing)} missing): "
            "pip install 'gcp-auth-proxy[test]', or run `make demo` from a checkout", ExitStatus.UNAVAILABLE,
        )
    proc = subprocess.Popen([sys.executable, "-m", DEMO_MODULE, *(["--keep"] if args.keep else [])])
    try:
        return wrap.exit_status(proc.wait())
    except KeyboardInterrupt:
        # Ctrl-C reached the demo too (same process group): let it stop its servers and clean up.
        try:
            return wrap.exit_status(proc.wait(timeout=DEMO_CLEANUP_TIMEOUT))
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
            return 130


COMMANDS: dict[str, Any] = {"serve": cmd_serve, "ca": cmd_ca, "demo": cmd_demo,
                            "run": runcmd.cmd_run, "env": runcmd.cmd_env, "audit": cmd_audit}


def main(argv: Sequence[str]) -> int:
    """Run one command; returns the exit status (testable in-process)."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as e:  # argparse already printed usage and the error
        return ExitStatus.OK if e.code == 0 else ExitStatus.USAGE
    try:
        return int(COMMANDS[args.command](args))
    except ProxyError as e:
        print(f"gcp-auth-proxy: {e}", file=sys.stderr)
        return int(e.status)
    except KeyboardInterrupt:
        return 130
