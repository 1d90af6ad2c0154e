"""Entry point: re-executes under ``python -O`` before any heavy import, then runs the CLI."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence

# Commands that run the proxy in this process (the others gain nothing from -O; `demo` starts
# its proxies as `python -m proxy serve/run`, which re-execute themselves).
_PROXY_COMMANDS = frozenset({"serve", "run"})


def optimized_bytecode_usable() -> bool:
    """True when mitmproxy's -O bytecode is cached, or can be written on this first run.

    Without a cache (PYTHONDONTWRITEBYTECODE, a read-only site-packages), -O would recompile
    mitmproxy at every start, costing about a second: then it is not worth it.
    """
    spec = importlib.util.find_spec("mitmproxy")
    if spec is None or spec.origin is None:
        return False
    cached = importlib.util.cache_from_source(os.path.join(os.path.dirname(spec.origin), "master.py"),
                                              optimization=1)
    if os.path.exists(cached):
        return True
    return not sys.dont_write_bytecode and os.access(os.path.dirname(os.path.dirname(cached)), os.W_OK)


def reexec_optimized(argv: Sequence[str]) -> None:
    """Re-execute ``python -O -m proxy ARGV`` for commands that run the proxy.

    mitmproxy checks the type of every internal event unless Python runs with -O; that costs
    10-16 % of the proxy's CPU per request (benchmarks/levers.py). Our own asserts only narrow
    types, and the test suite's proxies run this same path. The child of `run` is a separate
    program and is not affected.
    """
    if sys.flags.optimize or not argv or argv[0] not in _PROXY_COMMANDS:
        return
    if not optimized_bytecode_usable():
        return
    os.execv(sys.executable, [sys.executable, "-O", "-m", "proxy", *argv])


def console_main() -> None:
    argv = sys.argv[1:]
    reexec_optimized(argv)
    from proxy import cli

    sys.exit(cli.main(argv))
