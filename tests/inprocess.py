"""The real proxy inside the test process: ``proxy.embed.run_proxy`` on its own event loop in a thread.

Starting one costs a few milliseconds instead of a Python start plus the mitmproxy and google-auth
imports (about a second each time). Tests that need the process itself (signals, exit codes, the
CLI's own logging, environment variables google-auth reads at import) start one with
``tests.proxyproc.start_proxy`` instead.

One at a time: mitmproxy keeps its current master in a module global (``mitmproxy.ctx``) and hands
it to every connection it accepts (``mode_servers.py``), so two masters alive in one process would
answer for each other. ``start_in_process`` refuses to start a second one; a test that needs two
proxies at once uses a process for the other.

Output: every log record emitted in the proxy's thread, in a task of its loop, or in its worker
threads (``asyncio.to_thread`` copies the context; the executor's threads carry the proxy's name)
is written to the proxy's own file, formatted and redacted as ``proxy/logs.py`` does for the
program, with the program's levels (ours INFO, mitmproxy WARNING, DEBUG/INFO with --verbose). The
file is on ALL_OUTPUTS, so the session-wide token check reads it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import subprocess
import threading
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from proxy import cli, embed, logs
from proxy import settings as settings_mod
from proxy.errors import ProxyError
from tests.proxyproc import ALL_OUTPUTS, START_TIMEOUT, RunningProxy

STOP_TIMEOUT = 15.0
# Loggers the program configures (proxy/logs.py configure_logging): name -> (level, verbose level).
_LEVELS = {"addons": (logging.INFO, logging.DEBUG), "proxy": (logging.INFO, logging.DEBUG),
           "mitmproxy": (logging.WARNING, logging.INFO)}

_owner: contextvars.ContextVar[InProcessProxy | None] = contextvars.ContextVar("inprocess_proxy", default=None)
_alive: InProcessProxy | None = None
_alive_lock = threading.Lock()
_counter = iter(range(1_000_000))


class ThreadExit:
    """The in-process proxy's answer to ``Popen.poll()`` / ``wait()``: the exit status ``cli.main``
    would return (0 after a clean stop, the ProxyError's status, 1 for an unexpected exception)."""

    def __init__(self, thread: threading.Thread) -> None:
        self._thread = thread
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("in-process proxy", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        raise TypeError("an in-process proxy takes no signals: use the proxy_process fixtures")


class InProcessProxy(RunningProxy):
    """One ``serve`` run by ``proxy.embed.run_proxy`` in a thread of this process; ``proc`` stands in for Popen."""

    def __init__(self, name: str, settings: settings_mod.Settings, confdir: Path, output: Path) -> None:
        super().__init__("127.0.0.1", 0, confdir, output)
        self.name = name
        self.settings = settings
        self.master: Any = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.proc = ThreadExit(self.thread)
        self._handler: _OutputHandler | None = None
        self._saved_levels: dict[str, int] = {}

    def owns(self, record: logging.LogRecord) -> bool:
        owner = _owner.get()
        if owner is not None:
            return owner is self
        thread = record.threadName or ""
        return thread == self.name or thread.startswith(f"{self.name}-worker")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """Shut the master down (no drain: that is the SIGTERM path, tested with a process)."""
        global _alive
        if self.thread.is_alive() and self.master is not None:
            self.master.shutdown()
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"in-process proxy {self.name} did not stop within {timeout:g} s; "
                                 f"output:\n{self.text()}")
        self._detach_logging()
        with _alive_lock:
            if _alive is self:
                _alive = None
        assert self.proc.returncode is not None
        return self.proc.returncode

    # -- in the proxy's thread -------------------------------------------------------------------------

    def _run(self) -> None:
        _owner.set(self)  # every task and to_thread call of this loop inherits it
        loop = asyncio.new_event_loop()
        executor = ThreadPoolExecutor(thread_name_prefix=f"{self.name}-worker")
        loop.set_default_executor(executor)
        code = 1
        try:
            loop.run_until_complete(embed.run_proxy(
                self.settings, on_ready=self._on_ready, install_signal_handlers=False, started=self._started))
            code = 0
        except ProxyError as e:  # what cli.main prints and returns
            self._write(f"gcp-auth-proxy: {e}\n")
            code = int(e.status)
        except BaseException:  # noqa: BLE001 - an uncaught exception: a traceback, exit status 1
            self._write(traceback.format_exc())
        finally:
            _cancel_remaining(loop)
            executor.shutdown(wait=False, cancel_futures=True)
            loop.close()
            self.proc.returncode = code
            self._close_output()
            self.ready.set()

    def _started(self, m: Any) -> None:
        self.master = m

    def _on_ready(self, addresses: list[tuple[str, int]]) -> None:
        self.host, self.port = addresses[0]
        self.ready.set()

    # -- output ----------------------------------------------------------------------------------------

    def _attach_logging(self, verbose: bool, fmt: str) -> None:
        self._handler = _OutputHandler(self, fmt)
        logging.getLogger().addHandler(self._handler)
        for name, (level, verbose_level) in _LEVELS.items():
            logger = logging.getLogger(name)
            self._saved_levels[name] = logger.level
            logger.setLevel(verbose_level if verbose else level)

    def _detach_logging(self) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        self._saved_levels.clear()

    def _write(self, text: str) -> None:
        with self.output.open("a") as f:
            f.write(text)
        self._add_line(text)


class _OutputHandler(logging.FileHandler):
    """The proxy's own log lines (and only those) to its output file and its line list."""

    def __init__(self, pp: InProcessProxy, fmt: str) -> None:
        super().__init__(pp.output, encoding="utf-8")
        self.pp = pp
        # The program's formatting and its last-line redaction (proxy/logs.py configure_logging).
        self.setFormatter(logs._JsonFormatter() if fmt == "json" else logging.Formatter("gcp-auth-proxy: %(message)s"))
        self.addFilter(logs._Redacting())

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pp.owns(record) and bool(super().filter(record))

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        try:
            self.pp._add_line(self.format(record))
        except Exception:  # noqa: BLE001 - as logging does: a bad record must not break the proxy
            self.handleError(record)


def _cancel_remaining(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())


def start_in_process(args: Sequence[str], *, confdir: Path, output: Path) -> InProcessProxy:
    """``serve ARGS...`` as the CLI parses it, run in this process; returns once it listens.

    The caller sets the environment google-auth reads at load time (credentials) beforehand.
    """
    global _alive
    settings = settings_mod.from_sources(vars(cli.build_parser().parse_args(["serve", *args])))
    pp = InProcessProxy(f"inprocess-proxy-{next(_counter)}", settings, confdir, output)
    with _alive_lock:
        if _alive is not None:
            raise RuntimeError(f"{_alive.name} is still running: mitmproxy serves one master per process "
                               "(mitmproxy.ctx); start the other proxy as a process (proxy_process_factory)")
        _alive = pp
    output.touch()
    ALL_OUTPUTS.append(output)
    pp._attach_logging(settings.verbose, settings.log_format)
    pp.thread.start()
    if not pp.ready.wait(START_TIMEOUT) or pp.port == 0:
        pp.stop()
        raise AssertionError(f"in-process proxy did not start listening (status {pp.proc.poll()}); "
                             f"output:\n{pp.text()}")
    return pp
