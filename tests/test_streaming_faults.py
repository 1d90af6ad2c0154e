"""Streams that go wrong: an upstream reset mid-stream, a client that vanishes, the proxy shutting down.

The affected stream ends with an error its audit record names; other streams carry on; no token
appears in any record or answer (the session-wide check covers the proxy's own output).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from fakegoogle import FakeGoogle
from tests.audit_records import wait_for_records
from tests.conftest import ProxyFactory
from tests.streaming_clients import (
    MODEL_PATH,
    SSE_URL,
    WS_URL,
    assert_live,
    httpx_client,
    sse_with_httpx,
    ssl_context,
)

RESET_HOST = "europe-west4-aiplatform.googleapis.com"  # --resolve sends only this name to the resetter
EVENT = b'data: {"fake":{"seq":%d,"sent_at":0,"last":false}}\r\n\r\n'


class ResettingUpstream:
    """A TLS origin for RESET_HOST: answers two events, waits to be told, then resets the TCP connection.

    It speaks the protocol the proxy offers first (HTTP/2 when the client asked the proxy for it).
    """

    def __init__(self, fake: FakeGoogle) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(fake.workdir / "google-cert.pem", fake.workdir / "google-key.pem")
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.release = threading.Event()  # the test saw the first events: now reset
        self.authorized: list[bool] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            raw, _ = self.listener.accept()
            with self.context.wrap_socket(raw, server_side=True) as tls:
                if tls.selected_alpn_protocol() == "h2":
                    self._h2(tls)
                else:
                    self._http1(tls)
                self.release.wait(30)
                # SO_LINGER 0: close() sends a TCP RST, no TLS close_notify, no end of the stream.
                tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _http1(self, tls: ssl.SSLSocket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += tls.recv(65536)
        self.authorized.append(b"\r\nauthorization: bearer " in head.lower())
        tls.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for seq in range(2):
            tls.sendall(b"%x\r\n%s\r\n" % (len(EVENT % seq), EVENT % seq))

    def _h2(self, tls: ssl.SSLSocket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        while True:
            for event in conn.receive_data(tls.recv(65536)):
                if isinstance(event, h2.events.RequestReceived):
                    headers = dict(event.headers)
                    self.authorized.append(headers.get(b"authorization", b"").lower().startswith(b"bearer "))
                    conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
                    for seq in range(2):
                        conn.send_data(event.stream_id, EVENT % seq)
                    tls.sendall(conn.data_to_send())
                    return
            tls.sendall(conn.data_to_send())


@pytest.fixture
def resetter(fake: FakeGoogle) -> Iterator[ResettingUpstream]:
    upstream = ResettingUpstream(fake)
    yield upstream
    upstream.release.set()
    upstream.thread.join(10)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_upstream_reset_mid_stream_ends_that_stream_with_an_error_and_not_the_others(
        proxy_factory: ProxyFactory, fake: FakeGoogle, resetter: ResettingUpstream, tmp_path: Path, http2):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit), "--resolve", f"{RESET_HOST}=127.0.0.1:{resetter.port}")
    pp.wait_for_line("token available")
    with ThreadPoolExecutor(1) as pool, httpx_client(pp, http2=http2) as client:
        healthy = pool.submit(sse_with_httpx, client, SSE_URL + "&events=6&interval_ms=200")
        received = b""
        with pytest.raises(httpx.HTTPError) as failed, client.stream(
                "POST", f"https://{RESET_HOST}{MODEL_PATH}:streamGenerateContent?alt=sse", json={}) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += chunk
                if received.count(b"\r\n\r\n") == 2:
                    resetter.release.set()  # both events are here; the reset comes next
        status, events, _, _ = healthy.result(60)
    assert received == EVENT % 0 + EVENT % 1, repr(failed.value)  # what came before the reset, nothing after
    assert status == 200
    assert_live(events, 6)
    assert resetter.authorized == [True]
    by_host = {r["host"]: r for r in wait_for_records(audit, 2)}
    broken = by_host[RESET_HOST]
    assert broken["status"] == 200 and broken["response_bytes"] == len(received)
    assert "closed" in broken["error"] or "reset" in broken["error"], broken["error"]
    assert "error" not in by_host["us-central1-aiplatform.googleapis.com"]
    assert not any(t in audit.read_text() + received.decode() for t in fake.issued_tokens)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_client_vanishing_mid_sse_is_recorded_and_other_streams_carry_on(
        proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path, http2):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit))
    pp.wait_for_line("token available")
    with ThreadPoolExecutor(1) as pool, httpx_client(pp, http2=http2) as other:
        healthy = pool.submit(sse_with_httpx, other, SSE_URL + "&events=6&interval_ms=200")
        with httpx_client(pp, http2=http2) as leaving:
            status, events, size, _ = sse_with_httpx(leaving, SSE_URL + "&events=50&interval_ms=100", stop_after=2)
        # Leaving the block closed the client's connection (HTTP/1) or reset its stream (HTTP/2).
        assert status == 200 and [e.seq for e in events] == [0, 1]
        status, events, _, _ = healthy.result(60)
    assert status == 200
    assert_live(events, 6)
    vanished, done = sorted(wait_for_records(audit, 2), key=lambda r: "error" not in r)
    assert "error" not in done and done["status"] == 200
    assert vanished["status"] == 200 and vanished["error"], vanished
    assert size <= vanished["response_bytes"] < 50 * size // 2  # what passed, not the whole stream


def test_streams_open_at_shutdown_get_their_records_with_error_shutdown(
        proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit))
    pp.wait_for_line("token available")
    first_event = threading.Event()
    socket_open = threading.Event()

    def sse() -> None:
        with httpx_client(pp, http2=True) as client, client.stream(
                "POST", SSE_URL + "&events=1000&interval_ms=50", json={}) as r:
            for chunk in r.iter_raw():
                if chunk:
                    first_event.set()

    async def websocket() -> None:
        from websockets.asyncio.client import connect

        async with connect(WS_URL, proxy=pp.url, ssl=ssl_context(pp)) as ws:
            await ws.send("hello")
            await ws.recv()
            socket_open.set()
            await ws.wait_closed()

    with ThreadPoolExecutor(2) as pool:
        streams = [pool.submit(sse), pool.submit(asyncio.run, websocket())]
        assert first_event.wait(30) and socket_open.wait(30)
        pp.stop()
        for stream in streams:
            try:
                stream.result(30)
            except Exception:  # noqa: BLE001,S110 - the proxy went away under them: that is the point
                pass
    by_kind = {"websocket" if r.get("websocket") else "sse": r for r in wait_for_records(audit, 2)}
    assert by_kind["sse"]["error"] == "shutdown" and by_kind["sse"]["status"] == 200
    assert by_kind["sse"]["response_bytes"] > 0
    assert by_kind["websocket"]["error"] == "shutdown" and by_kind["websocket"]["request_messages"] == 1
    assert len(audit.read_text().splitlines()) == 2  # one record each, even as their connections close
