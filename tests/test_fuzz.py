"""A bounded fuzz run at the proxy port: random and malformed HTTP/1.1, HTTP/2 and TLS bytes.

Afterwards the proxy must still serve a normal request, and no answer to the fuzzer may contain a
token. Loopback only; bounded in count (FUZZ_CASES) and time (short socket timeouts, a thread pool).
"""

from __future__ import annotations

import os
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import h2.config
import h2.connection
import pytest
import requests

from fakegoogle import FakeGoogle
from tests.proxyproc import ProxyProcess, base_env, proxy_args, start_proxy

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "160"))
SEED = int(os.environ.get("FUZZ_SEED", "20261125"))
READ_TIMEOUT = 2.0

VALID_REQUESTS = [
    b"GET http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n\r\n",
    (b"POST http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n"
     b"Content-Length: 5\r\n\r\nhello"),
    (b"POST http://storage.googleapis.com/echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    b"CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n\r\n",
    b"GET http://www.example.test/ HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
]
NASTY = [
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"Content-Length: 5\r\nContent-Length: 6\r\n",
    b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n", b"Transfer-Encoding: xchunked\r\n",
    b"Host: 169.254.169.254\r\n", b"Host: storage.googleapis.com.evil.test\r\n", b"X: \x00\xff\r\n",
    b"Authorization: Bearer x\r\n", b"Proxy-Authorization: Basic ====\r\n", b" folded\r\n", b"\r\n\r\n\r\n",
    b"Expect: 100-continue\r\n", b"Connection: upgrade\r\nUpgrade: h2c\r\n", b":authority: x\r\n",
]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:  # flip a byte
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:  # insert a nasty header line after the request line
            cut = data.find(b"\r\n") + 2 if b"\r\n" in data else pos
            data[cut:cut] = rng.choice(NASTY)
        elif op == 2:  # truncate
            del data[pos:]
        elif op == 3:  # duplicate a slice
            data[pos:pos] = data[max(0, pos - 20):pos] * rng.randint(1, 4)
        elif op == 4:  # random bytes
            data[pos:pos] = rng.randbytes(rng.randint(1, 64))
        else:  # swap line endings
            data = bytearray(bytes(data).replace(b"\r\n", rng.choice([b"\n", b"\r", b"\r\r\n", b"\n\r"]), 1))
    return bytes(data)


def h2_frames(rng: random.Random, authority: str) -> bytes:
    """A valid h2 preface + request, then mutated: bad lengths, unknown types, bad streams."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/echo"), (":scheme", "https"),
                          (":authority", authority)], end_stream=rng.random() < 0.5)
    data = conn.data_to_send()
    frames = [bytes([0, 0, rng.randint(0, 64), rng.randrange(256), rng.randrange(256), 0, 0, 0, rng.randrange(8)])
              + rng.randbytes(rng.randint(0, 64)) for _ in range(rng.randint(0, 5))]
    tail = mutate(rng, data[len(H2_PREFACE):]) if rng.random() < 0.7 else data[len(H2_PREFACE):]
    return H2_PREFACE + tail + b"".join(frames)


def read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    out = b""
    try:
        while len(out) < 1 << 20 and (chunk := sock.recv(65536)):
            out += chunk
    except (TimeoutError, OSError, ssl.SSLError):
        pass
    return out


class Fuzzer:
    def __init__(self, pp: ProxyProcess, rng: random.Random) -> None:
        self.pp = pp
        self.rng = rng
        self.tls = ssl.create_default_context(cafile=str(pp.ca_cert))

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.pp.port), timeout=READ_TIMEOUT)
        return s

    def case(self, kind: str, seed: int) -> bytes:
        rng = random.Random(seed)
        with self.connect() as s:
            if kind == "random":
                s.sendall(rng.randbytes(rng.randint(1, 4096)))
                return read_all(s)
            if kind == "http1":
                for _ in range(rng.randint(1, 3)):  # sometimes pipelined
                    s.sendall(mutate(rng, rng.choice(VALID_REQUESTS)))
                return read_all(s)
            if kind == "h2c":
                s.sendall(h2_frames(rng, "storage.googleapis.com"))
                return read_all(s)
            # Everything else goes through CONNECT first.
            host = "storage.googleapis.com" if kind != "tunnel-garbage" else "www.example.test"
            s.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and (chunk := s.recv(1024)):
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                return head
            if kind in ("tls-garbage", "tunnel-garbage"):
                s.sendall(rng.randbytes(rng.randint(1, 2048)))
                return head + read_all(s)
            ctx = self.tls
            ctx.set_alpn_protocols(["h2"] if kind == "h2-tls" else ["http/1.1"])
            try:
                with ctx.wrap_socket(s, server_hostname=host) as t:
                    if kind == "h2-tls":
                        t.sendall(h2_frames(rng, host))
                    else:
                        t.sendall(mutate(rng, b"GET /echo HTTP/1.1\r\nHost: storage.googleapis.com\r\n"
                                               b"Content-Length: 3\r\n\r\nabc"))
                    return head + read_all(t)
            except (ssl.SSLError, OSError):
                return head


@pytest.fixture(scope="module")
def fuzz_proxy(fake_google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = base_env(GOOGLE_APPLICATION_CREDENTIALS=str(fake_google.write_service_account_key(tmp / "sa.json")))
    pp = start_proxy(["serve", *proxy_args(fake_google, tmp / "confdir", "--header-timeout", "2",
                                           "--read-timeout", "5")],
                     env=env, confdir=tmp / "confdir", output=tmp / "proxy.log")
    pp.wait_for_line("token available")
    yield pp
    pp.stop()


def test_fuzz_then_normal_request_works_and_no_token_leaked(fuzz_proxy: ProxyProcess, fake_google: FakeGoogle):
    fake_google.set_token_failure(None)
    rng = random.Random(SEED)
    fuzzer = Fuzzer(fuzz_proxy, rng)
    kinds = ["random", "http1", "http1", "h2c", "tls-garbage", "tunnel-garbage", "h2-tls", "http1-tls"]
    jobs: list[tuple[str, int]] = [(kinds[i % len(kinds)], rng.randrange(1 << 30)) for i in range(FUZZ_CASES)]
    run: Callable[[tuple[str, int]], bytes] = lambda job: fuzzer.case(*job)
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(run, jobs))

    tokens = [t for t in fake_google.issued_tokens if t]
    assert tokens, "the proxy should hold a token while being fuzzed"
    for (kind, seed), answer in zip(jobs, answers, strict=True):
        assert not any(t.encode() in answer for t in tokens), f"token in answer to {kind} case seed={seed}"
        assert b"ya29." not in answer, f"token-like string in answer to {kind} case seed={seed}"
        assert b"Traceback" not in answer

    assert fuzz_proxy.proc.poll() is None, "the proxy died under fuzzing"
    assert "Traceback" not in fuzz_proxy.text()
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": fuzz_proxy.url}
    s.verify = str(fuzz_proxy.ca_cert)
    r = s.get("https://storage.googleapis.com/echo", timeout=20)
    assert r.status_code == 200 and r.json()["token_valid"] is True
