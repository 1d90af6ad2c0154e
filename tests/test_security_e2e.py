"""Attacks on the real proxy process: strangers, look-alike requests, the metadata server."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from fakegoogle import FakeGoogle
from proxy import cli
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess, base_env, proxy_args, start_proxy

ECHO = "https://storage.googleapis.com/echo"


def curl(proxy: ProxyProcess, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """curl through the proxy; ``-w`` appends the status code on its own last line."""
    return subprocess.run(
        ["curl", "-sS", "-x", proxy.url, "--cacert", str(proxy.ca_cert), "-w", "\n%{http_code}", *args, url],
        env=base_env(), capture_output=True, text=True, timeout=30, check=False,
    )


def status_of(out: subprocess.CompletedProcess[str]) -> int:
    return int(out.stdout.rsplit("\n", 1)[-1])


def body_of(out: subprocess.CompletedProcess[str]) -> str:
    """The body of a ``curl -i`` answer (text mode turned CRLF into LF)."""
    return out.stdout.rsplit("\n", 1)[0].split("\n\n", 1)[1]


def raw_exchange(proxy: ProxyProcess, data: bytes) -> bytes:
    """Send raw bytes to the proxy port, return what it answers (until it closes or 10 s pass)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"content-length" not in b"".join(chunks).lower():
                    break
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                        return b"".join(chunks)
        except TimeoutError:
            pass
        return b"".join(chunks)


# -- proxy authentication --------------------------------------------------------------------------


@pytest.fixture
def auth_proxy(proxy_factory: ProxyFactory) -> ProxyProcess:
    pp = proxy_factory("--proxy-auth", "alice:s3cret-pass")
    pp.wait_for_line("token available")
    return pp


def test_connect_without_proxy_credentials_gets_bare_407(auth_proxy: ProxyProcess, fake: FakeGoogle):
    out = curl(auth_proxy, ECHO, "-v")
    assert out.returncode != 0
    assert "407" in out.stderr
    assert not fake.requests


def test_plain_http_without_proxy_credentials_gets_bare_407(auth_proxy: ProxyProcess, fake: FakeGoogle):
    out = curl(auth_proxy, "http://storage.googleapis.com/echo", "-i")
    assert status_of(out) == 407
    assert body_of(out) == "Proxy authentication required.\n"  # no hint about user, password or limit
    assert not fake.requests


def test_connect_and_plain_http_with_proxy_credentials_pass(auth_proxy: ProxyProcess, fake: FakeGoogle):
    out = curl(auth_proxy, ECHO, "--proxy-user", "alice:s3cret-pass")
    assert status_of(out) == 200, out.stderr
    out = curl(auth_proxy, "http://storage.googleapis.com/echo", "--proxy-user", "alice:s3cret-pass")
    assert status_of(out) == 200, out.stderr
    echoed = json.loads(out.stdout.rsplit("\n", 1)[0])
    assert "proxy-authorization" not in echoed["headers"]  # never forwarded upstream
    assert all(q.token_valid for q in fake.requests)


def test_wrong_password_is_rate_limited_even_when_right_later(auth_proxy: ProxyProcess, fake: FakeGoogle):
    for _ in range(10):
        assert status_of(curl(auth_proxy, "http://storage.googleapis.com/echo", "--proxy-user", "alice:guess")) == 407
    # The right password now gets the same bare 407: guessing online is capped per address.
    out = curl(auth_proxy, "http://storage.googleapis.com/echo", "-i", "--proxy-user", "alice:s3cret-pass")
    assert status_of(out) == 407
    assert body_of(out) == "Proxy authentication required.\n"
    assert not fake.requests


def test_htpasswd_file_with_bcrypt_and_sha_entries(proxy_factory: ProxyFactory, tmp_path: Path, fake: FakeGoogle):
    sha = base64.b64encode(__import__("hashlib").sha1(b"sha-pass").digest()).decode()
    hashed = bcrypt.hashpw(b"bcrypt-pass", bcrypt.gensalt(rounds=4)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"# users\nbob:{hashed}\ncarol:{{SHA}}{sha}\n")
    pp = proxy_factory("--proxy-auth", f"@{htpasswd}")
    assert status_of(curl(pp, ECHO, "--proxy-user", "bob:bcrypt-pass")) == 200
    assert status_of(curl(pp, "http://storage.googleapis.com/echo", "--proxy-user", "carol:sha-pass")) == 200
    assert status_of(curl(pp, "http://storage.googleapis.com/echo", "--proxy-user", "bob:sha-pass")) == 407
    assert status_of(curl(pp, "http://storage.googleapis.com/echo", "--proxy-user", "mallory:x")) == 407


def test_non_loopback_listen_without_proxy_auth_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    code = cli.main(["serve", "--listen", "0.0.0.0:0", "--confdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 64
    assert err.count("\n") == 1 and "--proxy-auth" in err and "Traceback" not in err


def test_unsupported_htpasswd_hash_is_one_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("bob:$apr1$abc$def\n")
    code = cli.main(["serve", "--proxy-auth", f"@{htpasswd}", "--confdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 64
    assert err.count("\n") == 1 and "bcrypt" in err and "Traceback" not in err


# -- a client's own Authorization ------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["keep", "replace", "reject"])
def test_client_auth_modes(mode: str, proxy_factory: ProxyFactory, fake: FakeGoogle):
    pp = proxy_factory("--client-auth", mode)
    pp.wait_for_line("token available")
    out = curl(pp, ECHO, "-H", "Authorization: Bearer the-clients-own")
    seen = [q for q in fake.requests if q.path == "/echo"]
    if mode == "keep":
        assert status_of(out) == 200
        assert [q.authorization for q in seen] == ["Bearer the-clients-own"]  # untouched
    elif mode == "replace":
        assert status_of(out) == 200
        assert len(seen) == 1 and seen[0].token_valid
    else:
        assert status_of(out) == 403
        assert json.loads(out.stdout.rsplit("\n", 1)[0])["error"]["errors"][0]["reason"] == "clientAuthorizationRejected"
        assert not seen


@pytest.fixture(scope="module")
def guarded_proxy(fake_google: FakeGoogle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """One proxy, with a token, for the many cases below (module-scoped: a proxy start costs seconds)."""
    # Should the policy ever fail, metadata.google.internal reaches the fake, not a real server;
    # a short connect timeout bounds an attempt at a link-local address.
    m_host, m_port = fake_google.metadata_addr
    tmp = tmp_path_factory.mktemp("guarded")
    pp = start_proxy(
        ["serve", *proxy_args(fake_google, tmp / "confdir",
                              "--resolve", f"metadata.google.internal={m_host}:{m_port}",
                              "--resolve", "rebind.example.test=169.254.169.254:80", "--connect-timeout", "2")],
        env=base_env(GOOGLE_APPLICATION_CREDENTIALS=str(fake_google.write_service_account_key(tmp / "sa.json"))),
        confdir=tmp / "confdir", output=tmp / "proxy.log")
    pp.wait_for_line("token available")
    yield pp
    pp.stop()


# -- Google's token endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "https://oauth2.googleapis.com/echo",
    "https://sts.googleapis.com/echo",
])
def test_no_token_for_google_token_endpoints(url: str, guarded_proxy: ProxyProcess, fake: FakeGoogle):
    out = curl(guarded_proxy, url)
    assert status_of(out) == 200, out.stderr
    assert json.loads(out.stdout.rsplit("\n", 1)[0])["authorization_present"] is False


def test_no_token_for_iamcredentials_generate(guarded_proxy: ProxyProcess, fake: FakeGoogle):
    curl(guarded_proxy, "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com"
                ":generateAccessToken", "-X", "POST", "-d", "{}")
    seen = [q for q in fake.requests if q.host.startswith("iamcredentials")]
    assert seen and all(q.authorization is None for q in seen)


# -- the metadata server -------------------------------------------------------------------------------


METADATA_SPELLINGS = [
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "169.254.43518",
    "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]", "[64:ff9b::a9fe:a9fe]", "[fe80::1]",
    "metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata",
]


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_server_refused_over_plain_http(host: str, guarded_proxy: ProxyProcess):
    answer = raw_exchange(guarded_proxy, (
        f"GET http://{host}/computeMetadata/v1/instance/service-accounts/default/token HTTP/1.1\r\n"
        f"Host: {host}\r\nMetadata-Flavor: Google\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"forbiddenByProxyPolicy" in answer


@pytest.mark.parametrize("host", METADATA_SPELLINGS)
def test_metadata_server_refused_over_connect(host: str, guarded_proxy: ProxyProcess):
    answer = raw_exchange(guarded_proxy, f"CONNECT {host}:80 HTTP/1.1\r\nHost: {host}:80\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]


def test_metadata_server_refused_with_curl(guarded_proxy: ProxyProcess):
    url = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
    out = curl(guarded_proxy, url, "-H", "Metadata-Flavor: Google")
    assert status_of(out) == 403
    out = curl(guarded_proxy, url, "-H", "Metadata-Flavor: Google", "--proxytunnel")
    assert out.returncode != 0 and "403" in out.stderr


def test_name_resolving_to_metadata_address_is_refused_before_connecting(guarded_proxy: ProxyProcess):
    # rebind.example.test is not a metadata name, but it leads to 169.254.169.254: refused at connect.
    answer = raw_exchange(guarded_proxy, (
        b"GET http://rebind.example.test/computeMetadata/v1/ HTTP/1.1\r\n"
        b"Host: rebind.example.test\r\nMetadata-Flavor: Google\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 502"), answer[:200]
    assert b"refuses to connect" in answer
    assert "timed out" not in guarded_proxy.text()


def test_allow_metadata_passes_but_strips_client_metadata_headers(proxy_factory: ProxyFactory, fake: FakeGoogle):
    m_host, m_port = fake.metadata_addr
    pp = proxy_factory("--allow-metadata", "--resolve", f"metadata.google.internal={m_host}:{m_port}")
    out = curl(pp, "http://metadata.google.internal/computeMetadata/v1/project/project-id",
               "-H", "Metadata-Flavor: Google", "-H", "X-Forwarded-For: 10.0.0.1")
    # The fake metadata server answers 403 "Missing required header": the client's header was dropped.
    assert status_of(out) == 403
    assert "Metadata-Flavor" in out.stdout


def test_allow_host_limits_reachable_hosts(proxy_factory: ProxyFactory, fake: FakeGoogle):
    pp = proxy_factory("--allow-host", "storage.googleapis.com")
    pp.wait_for_line("token available")
    assert status_of(curl(pp, ECHO)) == 200
    assert status_of(curl(pp, "http://www.example.test/")) == 403
    out = curl(pp, "https://www.example.test/")
    assert out.returncode != 0 and "403" in out.stderr
