"""WebSockets to injected hosts: the token on the upgrade, messages live both ways, one audit record per socket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from fakegoogle import FakeGoogle
from tests.audit_records import wait_for_records
from tests.conftest import ProxyFactory
from tests.proxyproc import RunningProxy
from tests.streaming_clients import WS_URL, ssl_context


@pytest.fixture
def audited(proxy_factory: ProxyFactory, tmp_path: Path) -> tuple[RunningProxy, Path]:
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit))
    pp.wait_for_line("token available")
    return pp, audit


def ws_connect(proxy: RunningProxy, **kwargs: object):
    return connect(WS_URL, proxy=proxy.url, ssl=ssl_context(proxy), open_timeout=30, **kwargs)  # type: ignore[arg-type]


def test_token_is_injected_on_the_upgrade_and_messages_go_both_ways_live(audited, fake: FakeGoogle):
    pp, audit = audited

    async def talk() -> tuple[list[str | bytes], float, float]:
        got: list[str | bytes] = []
        async with ws_connect(pp) as ws:
            opened = time.time()
            # Lockstep: each message must come back before the next is sent, so a proxy that held
            # frames (in either direction) would stall this loop and fail on the timeout.
            for i in range(5):
                await ws.send(f"turn {i}")
                got.append(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(b"\x00\xff" * 50)
            got.append(await asyncio.wait_for(ws.recv(), 10))
            last = time.time()
        return got, opened, last

    got, opened, last = asyncio.run(talk())
    assert got == [f"turn {i}" for i in range(5)] + [b"\x00\xff" * 50]
    (upgrade,) = [r for r in fake.requests if r.path.startswith("/ws/")]
    assert upgrade.token_valid  # the client sent no credentials; the proxy added the token
    (record,) = wait_for_records(audit, 1)
    assert record["websocket"] is True and record["status"] == 101 and record["auth"] == "injected"
    assert (record["request_messages"], record["response_messages"]) == (6, 6)
    expected_bytes = sum(len(f"turn {i}") for i in range(5)) + 100
    assert (record["request_bytes"], record["response_bytes"]) == (expected_bytes, expected_bytes)
    assert record["close_code"] == 1000 and record["closed_by"] == "client" and "error" not in record
    assert record["duration_ms"] >= (last - opened) * 1000
    assert not any(t in audit.read_text() for t in fake.issued_tokens)


def test_upgrade_with_a_rejected_token_gets_the_401_and_the_next_one_a_fresh_token(proxy: RunningProxy,
                                                                                   fake: FakeGoogle):
    """An upgrade is never replayed (the answer would be a socket): the client retries itself."""
    fake.revoke_all()

    async def twice() -> str | bytes:
        with pytest.raises(InvalidStatus) as refused:
            async with ws_connect(proxy):
                pass
        assert refused.value.response.status_code == 401
        async with ws_connect(proxy) as ws:
            await ws.send("again")
            return await asyncio.wait_for(ws.recv(), 10)

    assert asyncio.run(twice()) == "again"
    assert [r.token_valid for r in fake.requests if r.path.startswith("/ws/")] == [False, True]


def test_oversized_message_ends_only_its_own_socket_and_the_record_says_why(audited, fake: FakeGoogle):
    pp, audit = audited

    async def run() -> None:
        async with ws_connect(pp) as other:
            await other.send("before")
            assert await asyncio.wait_for(other.recv(), 10) == "before"
            async with ws_connect(pp, max_size=1024) as small:
                await small.send("send:4096")  # the server answers 4 KiB, over this client's limit
                with pytest.raises(ConnectionClosedError) as closed:
                    await asyncio.wait_for(small.recv(), 10)
                assert closed.value.sent is not None and closed.value.sent.code == 1009
            await other.send("after")  # the other socket carries on
            assert await asyncio.wait_for(other.recv(), 10) == "after"

    asyncio.run(run())
    first, second = wait_for_records(audit, 2)
    assert first["close_code"] == 1009 and first["closed_by"] == "client"
    assert "1009" in first["error"] and first["response_bytes"] == 4096
    assert second["close_code"] == 1000 and "error" not in second and second["request_messages"] == 2


def test_server_close_code_is_relayed_and_recorded(audited):
    pp, audit = audited

    async def run() -> int | None:
        async with ws_connect(pp) as ws:
            await ws.send("close:4001")
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(run()) == 4001
    (record,) = wait_for_records(audit, 1)
    assert record["close_code"] == 4001 and record["closed_by"] == "server" and "4001" in record["error"]
