"""Graceful shutdown: the first SIGTERM/SIGINT drains, the second one exits at once.

Draining: stop listening, let requests in flight (and tunnels still moving bytes) finish for up to
the grace period, then shut mitmproxy down, which closes the audit log after its last line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

from mitmproxy import master

from addons.limits import Limits

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
TUNNEL_QUIET = 2.0  # a tunnel that moved no bytes for this long is not waited for


class GracefulShutdown:
    """Installed as the loop's signal handler by ``embed.run_proxy``."""

    def __init__(self, m: master.Master, grace: float, server: Any, limits: Limits) -> None:
        self.master = m
        self.grace = grace
        self.server = server  # mitmproxy's Proxyserver: stop accepting
        self.limits = limits  # its connection table says what is still in flight
        self.signals = 0
        self._task: asyncio.Task[None] | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)

    def on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals > 1:
            # A second signal means now: no waiting for worker threads (a hung token fetch) either.
            # The audit log is written unbuffered, line by line, so nothing is lost.
            logger.warning("second %s: exiting now", signal.Signals(sig).name)
            _flush_logs()
            os._exit(128 + sig)
        if self.grace <= 0:
            self.master.shutdown()
            return
        self._task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        await self.server.servers.update([])  # stop accepting; open connections stay
        deadline = time.monotonic() + self.grace
        busy = busy_connections(self.limits)
        if busy:
            logger.info("stopping: no new connections; waiting up to %g s for %d busy connection(s) "
                        "(a second signal exits at once)", self.grace, busy)
        while busy and time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
            busy = busy_connections(self.limits)
        if busy:
            logger.warning("stopping: grace period over, closing %d busy connection(s)", busy)
        else:
            logger.info("stopping: nothing in flight")
        self.master.shutdown()


def busy_connections(limits: Limits) -> int:
    """Connections with a request in flight, or tunnels that moved bytes within TUNNEL_QUIET seconds."""
    now = time.time()
    count = 0
    for state in limits.conns.values():
        if state.flows or (state.tunnel and state.handler is not None
                           and now - state.handler.timeout_watchdog.last_activity < TUNNEL_QUIET):
            count += 1
    return count


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):  # best effort on the way out
            handler.flush()
    sys.stderr.flush()
