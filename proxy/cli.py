"""Command line: ``serve``, ``run -- CMD``, ``env``, ``ca``, ``doctor``, ``demo``; maps errors to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from addons.options import BY_NAME, Option
from proxy import policy_cli, runcmd, wrap
from proxy import settings as settings_mod
from proxy.errors import ExitStatus, ProxyError

logger = logging.getLogger(__name__)

# The demo ships with the fake Google, not with the proxy: it runs as its own program and drives
# `python -m proxy` the way a user would, so nothing in proxy/ imports the fake.
DEMO_MODULE = "fakegoogle.demo"
DEMO_NEEDS = ("fakegoogle", "hypercorn", "trustme", "google_crc32c", "google.cloud.storage", "grpc",
              "google.pubsub_v1")
DEMO_CLEANUP_TIMEOUT = 30.0


_GROUPS = {
    "proxy": "proxy options (also GCP_AUTH_PROXY_<NAME> environment variables)",
    "hardening": "hardening (docs/security.md; 0 turns a timeout off)",
}


def _show_default(option: Option) -> str:
    if option.kind == "bool":
        return "off"
    if option.kind == "list":
        return ", ".join(option.default) or ("any host" if option.name == "allow_host" else "none")
    if option.name == "confdir":
        return "~/.config/gcp-auth-proxy"
    return str(option.default) if option.default not in ("", None) else "off"


def add_option_flag(group: Any, option: Option) -> None:
    """One argparse flag from the option table; ``dest`` is the option's name."""
    flags = [option.short, option.flag] if option.short else [option.flag]
    text = f"{option.help} (default: {_show_default(option)})"
    if option.kind == "list":
        group.add_argument(*flags, dest=option.name, action="append", metavar=option.metavar, help=text)
    elif option.kind == "bool":
        group.add_argument(*flags, dest=option.name, action="store_const", const=True, help=text)
    else:
        group.add_argument(*flags, dest=option.name, metavar=option.metavar, choices=option.choices, help=text)


def _serve_options() -> argparse.ArgumentParser:
    """Options shared by every command that starts a proxy, all from addons/options.py."""
    p = argparse.ArgumentParser(add_help=False)
    groups = {name: p.add_argument_group(title) for name, title in _GROUPS.items()}
    for option in settings_mod.USER_OPTIONS:
        if option.commands & {"serve", "run", "env"}:
            add_option_flag(groups[option.group], option)
    return p


def options_markdown() -> str:
    """The README's option table, generated from the same list as the flags (a test compares)."""
    rows = ["| option | environment variable | default | meaning |", "|---|---|---|---|"]
    for option in settings_mod.USER_OPTIONS:
        flag = f"`{option.short}`, `{option.flag}`" if option.short else f"`{option.flag}`"
        if option.choices:
            flag = f"`{option.flag} {'|'.join(option.choices)}`"
        elif option.metavar:
            flag = f"`{option.flag} {option.metavar}`"
        cells = [flag, f"`{option.env}`", f"`{_show_default(option)}`", option.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def build_parser() -> argparse.ArgumentParser:
    common = _serve_options()
    parser = argparse.ArgumentParser(
        prog="gcp-auth-proxy",
        description="An HTTPS proxy that adds Google Application Default Credentials to Google API calls.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the proxy in the foreground")
    ca = sub.add_parser("ca", help="print the path of the proxy CA certificate (creating it if needed)")
    add_option_flag(ca, BY_NAME["confdir"])
    demo = sub.add_parser("demo", help="run a demo against a local fake Google (no account needed)")
    demo.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    runcmd.add_parsers(sub, common)
    audit = sub.add_parser("audit", help="read audit logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    summary = audit_sub.add_parser("summary", help="tables of calls, principals, errors, bytes, slowest calls")
    summary.add_argument("path", metavar="PATH", help="an audit log file, or - for stdin")
    summary.add_argument("--json", action="store_true", help="print the summary as JSON")
    summary.add_argument("--top", type=int, default=10, metavar="N", help="rows in the error and slowest lists")
    doctor = sub.add_parser("doctor", help="check what the proxy would do here (credentials, token, CA, "
                            "this shell's variables), without starting it; exit 1 on a failure")
    for option in settings_mod.USER_OPTIONS:
        if "doctor" in option.commands:
            add_option_flag(doctor, option)
    doctor.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    policy_cli.add_parsers(sub, add_option_flag)
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
                    listen, settings.confdir / "mitmproxy-ca-cert.pem", ", ".join(settings.inject_host),
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


def cmd_doctor(args: argparse.Namespace) -> int:
    from proxy import doctor

    return doctor.main(_settings(args), as_json=args.json)


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
                            "run": runcmd.cmd_run, "env": runcmd.cmd_env, "audit": cmd_audit,
                            "doctor": cmd_doctor, "policy": policy_cli.cmd_policy}


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
