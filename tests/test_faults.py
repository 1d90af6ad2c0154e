"""Faults: token source outages (real google-auth, real transport, the fake) and graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import google.auth
import pytest

from addons.resolve import parse_resolve_rules
from addons.token_cache import TokenCache, TokenError
from addons.token_transport import TimedRequest, make_session, parse_retry_after
from fakegoogle import FakeGoogle
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess, base_env, proxy_args, start_proxy


class Clock:
    """Wall clock that a test can move forward (google-auth's expiry is real time)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def real_cache(fake: FakeGoogle, key: Path, clock: Clock | None = None) -> TokenCache:
    """A TokenCache with real service-account credentials and the proxy's own transport."""
    host, port = fake.googleapis_addr
    session = make_session(parse_resolve_rules([f"*.googleapis.com={host}:{port}"]), str(fake.google_ca_pem))
    # The transport keeps Retry-After on a monotonic clock; it moves with the test's clock.
    request = TimedRequest(session, clock=(lambda: time.monotonic() + clock.offset) if clock else time.monotonic)

    def load():  # type: ignore[no-untyped-def]
        creds, _ = google.auth.load_credentials_from_file(
            str(key), scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return creds

    return TokenCache(load, request, clock=clock or time.time, backoff_base=0.01, min_fetch_interval=0)


@pytest.mark.parametrize("value,expected", [
    ("1", 1.0), ("0", 0.0), ("120", 120.0), ("999999", 300.0), ("", None), ("soon", None), ("-1", None),
])
def test_parse_retry_after(value: str, expected: float | None):
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0


def test_429_retry_after_is_honoured_with_one_request(fake: FakeGoogle, sa_key: Path):
    cache = real_cache(fake, sa_key)
    fake.set_token_failure("429")  # the fake answers 429 with Retry-After: 1
    before = fake.token_requests
    with pytest.raises(TokenError) as err:
        cache.refresh()
    assert err.value.reason == "token_rate_limited"
    # One request (google-auth would have retried after 1 and 2 s), and no retry before Retry-After.
    assert fake.token_requests == before + 1
    assert cache.retry_in() >= 0.9
    with pytest.raises(TokenError):
        cache.refresh()
    assert fake.token_requests == before + 1
    fake.set_token_failure(None)


def test_valid_token_keeps_being_served_through_outage_and_recovers(fake: FakeGoogle, sa_key: Path):
    clock = Clock()
    fake.token_lifetime = 600
    cache = real_cache(fake, sa_key, clock)
    first = cache.get()
    clock.offset = 400  # inside the refresh margin, still valid
    assert cache.refresh_due()
    fake.set_token_failure("429")
    assert cache.get().value == first.value  # refresh failed; the still-valid token is served
    assert cache.fetch_failures == 1 and cache.last_error is not None
    fake.set_token_failure(None)
    clock.offset += cache.retry_in() + 1
    second = cache.get()
    assert second.value != first.value and cache.last_error is None


def test_no_token_and_token_endpoint_down_is_a_clear_502_then_recovers(proxy_factory: ProxyFactory,
                                                                       fake: FakeGoogle):
    import requests

    fake.set_token_failure("429")
    pp = proxy_factory()
    pp.wait_for_line("token unavailable")
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": pp.url}
    s.verify = str(pp.ca_cert)
    r = s.get("https://storage.googleapis.com/echo", timeout=30)
    assert r.status_code == 502
    assert r.json()["error"]["errors"][0]["reason"] == "token_rate_limited"
    fake.set_token_failure(None)
    # Recovery is automatic: the proxy keeps retrying in the background, no request needed.
    pp.wait_for_line("token available", timeout=30)
    r = s.get("https://storage.googleapis.com/echo", timeout=30)
    assert r.status_code == 200 and r.json()["token_valid"] is True


class _Relay(socketserver.ThreadingTCPServer):
    """A TCP relay to the fake metadata server, started late: a metadata server coming up slowly."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(("127.0.0.1", port), _RelayHandler)


class _RelayHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        upstream = socket.create_connection(self.server.target)  # type: ignore[attr-defined]

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                b.close()

        t = threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)
        t.start()
        pipe(self.request, upstream)
        t.join(10)


@pytest.fixture
def late_metadata(fake: FakeGoogle) -> Iterator[tuple[int, list[_Relay]]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    relays: list[_Relay] = []
    yield port, relays
    for r in relays:
        r.shutdown()
        r.server_close()


def test_metadata_server_slow_to_come_up_is_retried(proxy_process_factory: ProxyFactory, fake: FakeGoogle,
                                                     late_metadata: tuple[int, list[_Relay]]):
    # A process: google-auth reads the metadata server's address at import.
    port, relays = late_metadata
    addr = f"127.0.0.1:{port}"
    pp = proxy_process_factory(credentials=None,
                       env={"NO_GCE_CHECK": "false", "GCE_METADATA_HOST": addr, "GCE_METADATA_IP": addr})
    pp.wait_for_line("token unavailable", timeout=30)
    relay = _Relay(port, fake.metadata_addr)
    relays.append(relay)
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    line = pp.wait_for_line("token available", timeout=60)
    assert "gce_metadata" in line
    assert pp.proc.poll() is None


# -- graceful shutdown ---------------------------------------------------------------------------------


def start_slow_request(pp: ProxyProcess) -> socket.socket:
    """A plain-HTTP request whose body is held back: in flight once the proxy said 100 Continue."""
    s = socket.create_connection(("127.0.0.1", pp.port), timeout=30)
    s.sendall(b"POST http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n"
              b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert s.recv(1024).startswith(b"HTTP/1.1 100")  # the proxy has the request: it is in flight
    return s


def read_response(s: socket.socket) -> bytes:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n") if x.lower().startswith(b"content-length")), None)
        if length is not None and len(body) >= length:
            break
    return data


def test_sigterm_lets_in_flight_request_finish_then_exits_0(proxy_process_factory: ProxyFactory, tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_process_factory("--audit-log", str(audit), "--shutdown-grace", "30")
    pp.wait_for_line("token available")
    s = start_slow_request(pp)
    pp.proc.send_signal(signal.SIGTERM)
    pp.wait_for_line("stopping: no new connections")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", pp.port), timeout=5).close()
    s.sendall(b"hello")
    answer = read_response(s)
    s.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["token_valid"] is True
    assert pp.proc.wait(30) == 0
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["path"], r["status"]) for r in records] == [("/echo", 200)]


def test_second_sigterm_exits_at_once(proxy_process_factory: ProxyFactory):
    pp = proxy_process_factory("--shutdown-grace", "600")
    pp.wait_for_line("token available")
    s = start_slow_request(pp)
    pp.proc.send_signal(signal.SIGTERM)
    pp.wait_for_line("stopping: no new connections")
    assert pp.proc.poll() is None  # draining: it would wait up to 600 s
    pp.proc.send_signal(signal.SIGTERM)
    assert pp.proc.wait(10) == 128 + signal.SIGTERM
    s.close()


def test_sigterm_with_nothing_in_flight_exits_0_promptly(proxy_process: ProxyProcess):
    proxy_process.proc.send_signal(signal.SIGTERM)
    assert proxy_process.proc.wait(15) == 0


# -- limits: slow clients, big heads, too many connections, stuck upstreams ------------------------------


@pytest.fixture(scope="module")
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: a connection attempt hangs (loopback, nothing leaves)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    filler = socket.create_connection(srv.getsockname())
    yield srv.getsockname()[1]
    filler.close()
    srv.close()


@pytest.fixture(scope="module")
def silent_upstream() -> Iterator[int]:
    """Accepts connections and reads requests, never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(5)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture(scope="module")
def limited_proxy(fake_google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory, blackhole: int,
                  silent_upstream: int) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("limited")
    pp = start_proxy(
        ["serve", *proxy_args(fake_google, tmp / "confdir",
                              "--max-header-size", "8k", "--header-timeout", "1", "--connect-timeout", "1",
                              "--read-timeout", "1",
                              "--resolve", f"black.example.test=127.0.0.1:{blackhole}",
                              "--resolve", f"silent.example.test=127.0.0.1:{silent_upstream}")],
        env=base_env(), confdir=tmp / "confdir", output=tmp / "proxy.log")
    yield pp
    pp.stop()


def exchange(pp: ProxyProcess, data: bytes, timeout: float = 20) -> bytes:
    """Send ``data``, then read until the proxy closes the connection."""
    with socket.create_connection(("127.0.0.1", pp.port), timeout=timeout) as s:
        if data:
            s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:  # closed with our bytes unread: a reset, same meaning here
            pass
        return out


def curl_status(pp: ProxyProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "-x", pp.url, "-w", "\n%{http_code}", *args], env=base_env(), check=False,
                          capture_output=True, text=True, timeout=30)


def test_upstream_connect_timeout_is_504(limited_proxy: ProxyProcess):
    out = curl_status(limited_proxy, "http://black.example.test/")
    assert out.stdout.endswith("\n504"), out
    assert json.loads(out.stdout.rsplit("\n", 1)[0])["error"]["message"].count("timed out") == 1
    out = curl_status(limited_proxy, "-p", "https://black.example.test/")
    assert out.returncode != 0 and "504" in out.stderr


def test_upstream_read_timeout_is_504(limited_proxy: ProxyProcess):
    out = curl_status(limited_proxy, "http://silent.example.test/")
    assert out.stdout.endswith("\n504"), out
    assert "no answer within 1 s" in out.stdout


def test_oversized_request_head_gets_431_and_close(limited_proxy: ProxyProcess):
    answer = exchange(limited_proxy, b"GET http://www.example.test/ HTTP/1.1\r\nX-Big: " + b"a" * 20000)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]


def test_slow_request_head_gets_408_and_close(limited_proxy: ProxyProcess):
    answer = exchange(limited_proxy, b"GET http://www.example.test/ HTTP/1.1\r\nHost: www.exa")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_silent_new_connection_is_closed(limited_proxy: ProxyProcess):
    assert exchange(limited_proxy, b"").startswith(b"HTTP/1.1 408")


def test_connection_cap(proxy_factory: ProxyFactory):
    pp = proxy_factory("--max-connections", "3", "--header-timeout", "0")
    held = []
    for _ in range(3):  # three kept-alive connections, each proven registered by an answer
        s = socket.create_connection(("127.0.0.1", pp.port), timeout=20)
        s.sendall(b"GET http://metadata.google.internal/ HTTP/1.1\r\nHost: metadata.google.internal\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 403")
        held.append(s)
    assert exchange(pp, b"GET http://metadata.google.internal/ HTTP/1.1\r\nHost: x\r\n\r\n") == b""
    assert "refused a connection" in pp.wait_for_line("refused a connection")
    for s in held:
        s.close()
    # Below the cap again: new connections are served (bounded retry while the closes land).
    deadline = time.monotonic() + 20
    while not exchange(pp, b"GET http://metadata.google.internal/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        assert time.monotonic() < deadline


def test_oversized_head_inside_tls_gets_431(limited_proxy: ProxyProcess, tmp_path: Path):
    """The cap counts decrypted head bytes of intercepted HTTP/1 connections too (HTTP/2 header
    blocks are bounded by the h2 library's own frame and CONTINUATION limits)."""
    out = curl_status(limited_proxy, "--cacert", str(limited_proxy.ca_cert), "--http1.1", "-H", "X-Big: " + "a" * 20000,
                      "https://storage.googleapis.com/storage/v1/b/demo-bucket")
    assert out.stdout.endswith("\n431"), out


@pytest.mark.parametrize("size", [512 * 1024, 2 * 1024 * 1024])
def test_upload_body_sent_right_after_head_is_not_mistaken_for_a_head(proxy: ProxyProcess, tmp_path: Path,
                                                                      size: int):
    """Regression: body bytes that arrive before mitmproxy parsed the head once counted as head."""
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(size))
    out = curl_status(proxy, "--cacert", str(proxy.ca_cert), "--http1.1", "-H", "Expect:", "-X", "POST",
                      "--data-binary", f"@{payload}", "-H", "content-type: application/octet-stream",
                      "https://storage.googleapis.com/upload/storage/v1/b/demo-bucket/o?uploadType=media&name=up.bin")
    assert out.stdout.endswith("\n200"), out
