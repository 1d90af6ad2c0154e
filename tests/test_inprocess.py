"""The in-process proxy harness (tests/inprocess.py) keeps what the session-wide checks rely on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import ProxyFactory
from tests.inprocess import InProcessProxy
from tests.proxyproc import ALL_OUTPUTS


async def _log_from_a_worker_thread(message: str) -> None:
    # run_in_executor, unlike asyncio.to_thread, does not carry the context: the thread name must.
    await asyncio.get_running_loop().run_in_executor(None, logging.getLogger("addons.probe").warning, message)


def test_output_holds_this_proxys_records_and_only_those(proxy: InProcessProxy):
    assert proxy.output in ALL_OUTPUTS  # the session-wide token check reads it
    assert "token available" in proxy.text()  # logged by the token refresh, in asyncio.to_thread
    logging.getLogger("addons.probe").warning("said by the test, not the proxy")
    asyncio.run_coroutine_threadsafe(_log_from_a_worker_thread("said in a worker thread"),
                                     proxy.master.event_loop).result(10)
    proxy.wait_for_line("said in a worker thread")
    assert "said by the test" not in proxy.text()


def test_one_in_process_proxy_at_a_time(proxy: InProcessProxy, proxy_factory: ProxyFactory):
    with pytest.raises(RuntimeError, match="one master per process"):
        proxy_factory()
    assert proxy.proc.poll() is None
    assert proxy.stop() == 0 and proxy.proc.poll() == 0
    proxy_factory().wait_for_line("token available")  # the first one stopped: a new one may start


def test_signals_are_refused_with_a_pointer_to_process_fixtures(proxy: InProcessProxy):
    with pytest.raises(TypeError, match="proxy_process"):
        proxy.proc.send_signal(15)
