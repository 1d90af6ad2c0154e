"""Run several ASGI apps under hypercorn on one background event-loop thread.

Sockets are bound here (port 0) before hypercorn starts, so the ephemeral
port is known synchronously and connections queue in the backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from hypercorn.asyncio import serve
from hypercorn.config import Config

from .http import Receive, Scope, Send

HARD_STOP_AFTER = 2.0
TLS_CLOSE_TIMEOUT = 0.5


class QuickTlsCloseLoop(asyncio.SelectorEventLoop):
    """Event loop whose TLS servers give up on close_notify quickly.

    hypercorn does not expose ``ssl_shutdown_timeout`` (asyncio default: 30 s), and
    on Python 3.12 ``Server.wait_closed()`` waits for every connection, so one idle
    keep-alive TLS client would otherwise stall ``stop()`` for 30 s.
    """

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:  # type: ignore[override]
        if kwargs.get("ssl") is not None and kwargs.get("ssl_shutdown_timeout") is None:
            kwargs["ssl_shutdown_timeout"] = TLS_CLOSE_TIMEOUT
        return await super().create_server(*args, **kwargs)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop the expected noise of clients vanishing; log everything else as usual."""
    exc = context.get("exception")
    if isinstance(exc, (TimeoutError, ConnectionError, ssl.SSLError)):
        return
    loop.default_exception_handler(context)


App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class Site:
    """One listening server: an app, optional TLS cert/key, and its socket."""

    app: App
    certfile: Path | None = None
    keyfile: Path | None = None
    sock: socket.socket | None = None
    addr: tuple[str, int] = ("127.0.0.1", 0)

    def bind(self) -> tuple[str, int]:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        host, port = self.sock.getsockname()[:2]
        self.addr = (host, port)
        return self.addr

    async def probe(self) -> None:
        """Wait until hypercorn really serves this socket (the kernel backlog accepts earlier)."""
        host, port = self.addr
        ctx = None
        if self.certfile is not None:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
        try:
            if ctx is None:  # plain sites: a real request proves the app is wired up
                writer.write(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                await reader.readline()
        finally:
            writer.close()

    def config(self) -> Config:
        assert self.sock is not None, "bind() first"
        config = Config()
        # hypercorn adopts the fd and closes it at shutdown; detach so we don't double-close.
        config.bind = [f"fd://{self.sock.detach()}"]
        if self.certfile is not None:
            config.certfile, config.keyfile = str(self.certfile), str(self.keyfile)
            config.alpn_protocols = ["h2", "http/1.1"]
        config.accesslog = None
        config.errorlog = logging.getLogger("fakegoogle.hypercorn")
        config.graceful_timeout = 0.5
        config.backlog = 1024
        config.include_server_header = False
        config.h2_max_concurrent_streams = 256
        return config


class ServerThread:
    """Owns the event loop thread; ``start`` returns once every site is serving."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shutdown: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        configs = [site.config() for site in self.sites]
        self._thread = threading.Thread(
            target=self._run, args=(configs,), name="fakegoogle", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fakegoogle servers did not start in time")
        if self._error is not None:
            raise RuntimeError("fakegoogle servers failed to start") from self._error

    def _run(self, configs: list[Config]) -> None:
        try:
            with asyncio.Runner(loop_factory=QuickTlsCloseLoop) as runner:
                runner.run(self._main(configs))
        except BaseException as exc:  # noqa: BLE001 - surfaced to start()
            self._error = exc
            self._ready.set()

    async def _main(self, configs: list[Config]) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_exception_handler)
        self._shutdown = asyncio.Event()
        tasks = [
            asyncio.create_task(
                serve(cast(Any, site.app), cfg, shutdown_trigger=self._shutdown.wait, mode="asgi")
            )
            for site, cfg in zip(self.sites, configs)
        ]
        probe = asyncio.create_task(self._probe_all())
        try:
            await self._shutdown.wait()
            # Graceful first; then cancel (e.g. a client mid-way through a 1 GiB download).
            _, pending = await asyncio.wait(tasks, timeout=HARD_STOP_AFTER)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            probe.cancel()

    async def _probe_all(self) -> None:
        """Set ready once every site answers (TLS handshake, or HTTP for plain sites)."""
        try:
            for site in self.sites:
                await site.probe()
        except Exception as exc:  # noqa: BLE001 - surfaced to start()
            self._error = exc
        finally:
            self._ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._shutdown is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._shutdown.set)
            except RuntimeError:
                pass  # loop already closed
        if self._thread is not None:
            self._thread.join(timeout)
