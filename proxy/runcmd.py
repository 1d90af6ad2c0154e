"""The ``run -- CMD`` and ``env`` commands: their arguments and how they drive ``proxy.wrap``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from typing import Any

from proxy import settings as settings_mod
from proxy import wrap
from proxy.errors import ExitStatus, ProxyError

RUN_LISTEN = "127.0.0.1:0"
ENV_BOTO_NAME = "env-boto.cfg"


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``run`` and ``env`` on the main parser's subcommands."""
    run = sub.add_parser(
        "run", parents=[common], usage="gcp-auth-proxy run [proxy options] -- CMD [ARGS...]",
        help="run CMD with a private proxy on an ephemeral loopback port; exits with CMD's status",
    )
    run.add_argument(
        "--no-placeholder", dest="placeholder", action="store_false",
        help="do not give CMD placeholder credentials (a loopback GCE metadata endpoint)",
    )
    run.add_argument(
        "--isolate", action="store_true",
        help="run CMD in its own network namespace (Linux, unprivileged) where the only reachable "
             "address is the proxy: a direct connection or DNS lookup fails at once. A network "
             "fence, not a sandbox: the file system is shared",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run")
    env = sub.add_parser(
        "env", parents=[common],
        help="print variables that point a shell at a running `serve`: eval \"$(gcp-auth-proxy env)\"",
    )
    env.add_argument("--format", choices=("sh", "json"), default="sh", help="output format (default sh)")


def _given_proxy_options(args: argparse.Namespace) -> list[str]:
    return sorted(o.flag for o in settings_mod.USER_OPTIONS if getattr(args, o.name, None) not in (None, []))


def cmd_run(args: argparse.Namespace) -> int:
    from proxy import logs

    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ProxyError("run needs a command: gcp-auth-proxy run [options] -- CMD [ARGS...]")
    base = dict(os.environ)
    outer = base.get(wrap.MARKER)
    if outer:
        given = _given_proxy_options(args)
        if not args.placeholder:
            given.append("--no-placeholder")
        if args.isolate:
            given.append("--isolate")  # the outer run decides (put --isolate on it)
        if given:
            raise ProxyError(
                f"already running under gcp-auth-proxy ({outer}); a nested run reuses that proxy "
                f"and cannot take {', '.join(given)}", ExitStatus.NOPERM,
            )
        return asyncio.run(wrap.run_child(argv, base))
    flags = dict(vars(args))
    if flags.get("listen") is None:
        flags["listen"] = RUN_LISTEN  # not GCP_AUTH_PROXY_LISTEN: that is for `serve`
    settings = settings_mod.from_sources(flags)
    logs.configure_logging(verbose=settings.verbose, log_file=settings.log_file, fmt=settings.log_format,
                           quiet=True)
    return asyncio.run(wrap.run_wrapped(settings, argv, base, placeholder=args.placeholder,
                                        isolated=args.isolate))


def env_for_serve(settings: settings_mod.Settings, base: dict[str, str]) -> dict[str, str]:
    """The child environment a shell needs to use a running ``serve`` with these settings."""
    from proxy import trust

    ca_cert = trust.ensure_ca(settings.confdir)
    ca = wrap.prepare_trust(base, settings.confdir, ca_cert, settings.upstream_ca, settings.confdir)
    host = settings.listen_host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    url = wrap.proxy_url_for(host, settings.listen_port)
    if settings.proxy_auth and not settings.proxy_auth.startswith("@"):
        url = url.replace("http://", f"http://{settings.proxy_auth}@", 1)
    boto = trust.write_if_changed(settings.confdir / ENV_BOTO_NAME, wrap.boto_config(url, ca.bundle).encode())
    return wrap.child_env(base, url, ca, boto_file=str(boto))


def cmd_env(args: argparse.Namespace) -> int:
    settings = settings_mod.from_sources(vars(args))
    base = dict(os.environ)
    base.pop(wrap.MARKER, None)
    changed, removed = wrap.env_changes(base, env_for_serve(settings, base))
    if args.format == "json":
        print(json.dumps({"set": changed, "unset": removed}, indent=2, sort_keys=True))
    else:
        for name in sorted(changed):
            print(f"export {name}={shlex.quote(changed[name])}")
        for name in removed:
            print(f"unset {name}")
    sys.stdout.flush()
    return ExitStatus.OK
