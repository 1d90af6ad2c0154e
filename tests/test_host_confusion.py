"""Host confusion through the real proxy: a token goes only where the request, its TLS server name
and its CONNECT target all name the same injected host.

The attacker's origin is the fake's non-Google site (``www.example.test``), trusted upstream like
any public site; it reports every issued token it ever receives (the session-wide check in
conftest fails the suite on any). Each shape runs with and without ``--proxy-auth``.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest

from fakegoogle import FakeGoogle
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess, base_env

GOOGLE = "storage.googleapis.com"
EVIL = "www.example.test"
USER, PASSWORD = "alice", "s3cret-pass"
TIMEOUT = 15


@pytest.fixture(params=["open", "proxy-auth"])
def target(request: pytest.FixtureRequest, proxy_factory: ProxyFactory, fake: FakeGoogle,
           tmp_path: Path) -> Iterator[tuple[ProxyProcess, str | None]]:
    """A proxy that trusts both origins upstream, with or without proxy authentication."""
    bundle = tmp_path / "upstream.pem"
    bundle.write_bytes(fake.google_ca_pem.read_bytes() + fake.other_ca_pem.read_bytes())
    extra = ["--upstream-ca", str(bundle)]
    auth = None
    if request.param == "proxy-auth":
        extra += ["--proxy-auth", f"{USER}:{PASSWORD}"]
        auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    pp = proxy_factory(*extra)
    pp.wait_for_line("token available")
    yield pp, auth
    assert pp.proc.poll() is None, "the proxy died"


def proxy_auth_line(auth: str | None) -> bytes:
    return f"Proxy-Authorization: {auth}\r\n".encode() if auth else b""


def client_context(pp: ProxyProcess, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pp.ca_cert))
    ctx.check_hostname = False  # some shapes ask for names the leaf is not for; trust is not the point
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def open_tunnel(pp: ProxyProcess, authority: str, auth: str | None) -> socket.socket:
    """An established CONNECT tunnel (the CONNECT itself is allowed; what goes inside is the test)."""
    sock = socket.create_connection(("127.0.0.1", pp.port), timeout=TIMEOUT)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n".encode() + proxy_auth_line(auth) + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert b" 200 " in head.split(b"\r\n")[0], head
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ssl.SSLError, ConnectionResetError):
        pass
    return b"".join(chunks)


def tls_request(sock: socket.socket, pp: ProxyProcess, sni: str, request: bytes) -> bytes:
    """TLS with ``sni`` over ``sock``, one HTTP/1.1 request (Connection: close), the whole answer."""
    with client_context(pp, ["http/1.1"]).wrap_socket(sock, server_hostname=sni) as tls:
        tls.sendall(request)
        return read_all(tls)


def status(answer: bytes) -> int | None:
    line = answer.split(b"\r\n", 1)[0]
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def assert_no_token_anywhere(fake: FakeGoogle, answer: bytes) -> None:
    text = answer.decode("latin-1")
    assert not any(t in text for t in fake.issued_tokens), "a token came back to the client"
    assert not fake.leaks, f"the attacker's origin received a token in {fake.leaks}"
    for r in fake.requests:
        if r.server == "other":
            assert r.authorization is None, "the attacker's origin received an Authorization header"


def get(path_or_url: str, host: str, auth: str | None = None, extra: str = "") -> bytes:
    return (f"GET {path_or_url} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n").encode() + \
        proxy_auth_line(auth) + b"\r\n"


# -- the reported hole: TLS straight to the proxy port ---------------------------------------------


@pytest.mark.parametrize("request_target,host", [
    (f"https://{EVIL}/echo", EVIL),  # absolute-form for another host
    ("/echo", EVIL),  # origin-form, Host names another host
    (f"https://{GOOGLE}/echo", GOOGLE),  # even a consistent request: no TLS to the proxy port
])
def test_tls_spoken_directly_to_the_proxy_port_is_refused(target, fake: FakeGoogle, request_target, host):
    pp, auth = target
    sock = socket.create_connection(("127.0.0.1", pp.port), timeout=TIMEOUT)
    try:
        with client_context(pp).wrap_socket(sock, server_hostname=GOOGLE) as tls:
            tls.sendall(get(request_target, host, auth))
            answer = read_all(tls)
    except (ssl.SSLError, ConnectionResetError, OSError):
        answer = b""  # refused during the handshake: the expected outcome
    assert status(answer) is None
    assert_no_token_anywhere(fake, answer)
    assert not fake.requests, "nothing may go upstream"


# -- inside a CONNECT tunnel to Google: the request names another host --------------------------------


@pytest.mark.parametrize("request_target,host", [
    (f"https://{EVIL}/echo", GOOGLE),  # absolute-form target differs
    ("/echo", EVIL),  # Host differs
    ("/echo", f"{GOOGLE}:8443"),  # same name, another port
    (f"https://{EVIL}/echo", EVIL),  # both differ
])
def test_request_naming_another_host_inside_a_google_tunnel_gets_421_and_no_token(
        target, fake: FakeGoogle, request_target, host):
    pp, auth = target
    sock = open_tunnel(pp, f"{GOOGLE}:443", auth)
    answer = tls_request(sock, pp, GOOGLE, get(request_target, host))
    assert status(answer) == 421, answer[:300]
    assert b"misdirectedRequest" in answer
    assert_no_token_anywhere(fake, answer)
    assert not fake.requests


def test_server_name_other_than_the_connect_target_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    sock = open_tunnel(pp, f"{GOOGLE}:443", auth)
    try:
        answer = tls_request(sock, pp, EVIL, get("/echo", GOOGLE))
    except (ssl.SSLError, OSError):
        answer = b""  # upstream TLS checked against the client's name failed: also no token
    assert status(answer) in (None, 421, 502), answer[:300]
    assert_no_token_anywhere(fake, answer)
    assert all(not r.token_valid for r in fake.requests)


def test_google_server_name_in_a_tunnel_to_another_host_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    sock = open_tunnel(pp, f"{EVIL}:443", auth)
    try:
        answer = tls_request(sock, pp, GOOGLE, get("/echo", GOOGLE))
    except (ssl.SSLError, OSError):
        answer = b""
    assert_no_token_anywhere(fake, answer)


def test_ip_literal_connect_target_with_google_server_name_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    g_host, g_port = fake.googleapis_addr
    sock = open_tunnel(pp, f"{g_host}:{g_port}", auth)
    try:
        answer = tls_request(sock, pp, GOOGLE, get("/echo", GOOGLE))
    except (ssl.SSLError, OSError):
        answer = b""
    assert_no_token_anywhere(fake, answer)
    assert all(not r.token_valid for r in fake.requests), "a token reached an IP-literal destination"


def h2_get(pp: ProxyProcess, sock: socket.socket, authority: str, path: str) -> tuple[int | None, bytes]:
    """One HTTP/2 GET over TLS in an open tunnel, with any ``:authority`` and ``:path``: (status, body)."""
    with client_context(pp, ["h2"]).wrap_socket(sock, server_hostname=GOOGLE) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                     validate_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", authority),
                              (":path", path)], end_stream=True)
        tls.sendall(conn.data_to_send())
        got_status, body, done = None, b"", False
        while not done:
            data = tls.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    got_status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset,
                                        h2.events.ConnectionTerminated)):
                    done = True
            tls.sendall(conn.data_to_send())
    return got_status, body


def test_http2_authority_naming_another_host_gets_421(target, fake: FakeGoogle):
    pp, auth = target
    got_status, body = h2_get(pp, open_tunnel(pp, f"{GOOGLE}:443", auth), EVIL, "/echo")
    assert got_status == 421
    assert_no_token_anywhere(fake, body)
    assert not fake.requests


# -- plain http:// through the proxy -----------------------------------------------------------------


def plain(pp: ProxyProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", pp.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        return read_all(sock)


def test_plain_http_with_a_host_header_naming_another_host_gets_421(target, fake: FakeGoogle):
    pp, auth = target
    answer = plain(pp, get(f"http://{GOOGLE}/echo", EVIL, auth))
    assert status(answer) == 421, answer[:300]
    assert_no_token_anywhere(fake, answer)
    assert not fake.requests


def test_plain_http_to_another_host_with_a_google_host_header_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    answer = plain(pp, get(f"http://{EVIL}/echo", GOOGLE, auth))
    assert_no_token_anywhere(fake, answer)


def test_plain_http_to_an_ip_literal_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    g_host, g_port = fake.googleapis_addr
    answer = plain(pp, get(f"http://{g_host}:{g_port}/echo", GOOGLE, auth))
    assert_no_token_anywhere(fake, answer)
    assert all(not r.token_valid for r in fake.requests)


def test_plain_http_inside_a_tunnel_to_google_gets_no_token(target, fake: FakeGoogle):
    pp, auth = target
    sock = open_tunnel(pp, f"{GOOGLE}:80", auth)
    with sock:
        sock.sendall(get("/echo", GOOGLE))
        answer = read_all(sock)
    assert_no_token_anywhere(fake, answer)
    assert all(not r.token_valid for r in fake.requests)


# -- the consistent shapes still work ----------------------------------------------------------------


def test_consistent_tunnel_request_gets_the_token(target, fake: FakeGoogle):
    pp, auth = target
    sock = open_tunnel(pp, f"{GOOGLE}:443", auth)
    answer = tls_request(sock, pp, GOOGLE, get("/echo", f"{GOOGLE}:443"))
    assert status(answer) == 200, answer[:300]
    assert fake.requests[-1].token_valid
    assert_no_token_anywhere(fake, answer)


def test_trailing_dot_server_name_is_answered_at_once(target, fake: FakeGoogle):
    """``storage.googleapis.com.`` is the same name: curl gets its answer, not a hang."""
    pp, auth = target
    args = ["curl", "-sS", "-x", pp.url, "--cacert", str(pp.ca_cert), "-w", "\n%{http_code}",
            "--max-time", "10", f"https://{GOOGLE}./echo"]
    if auth:
        args += ["--proxy-user", f"{USER}:{PASSWORD}"]
    out = subprocess.run(args, env=base_env(), capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.rsplit("\n", 1)[-1] == "200"
    assert fake.requests[-1].token_valid
    assert "Traceback" not in pp.text()
