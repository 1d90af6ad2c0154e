"""Proxy auth on the real proxy process: lockout per user name, and Proxy-Authorization never upstream."""

from __future__ import annotations

import base64
import http.client
import subprocess
from pathlib import Path

import bcrypt
import pytest

from fakegoogle import FakeGoogle
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess, base_env

ECHO = "storage.googleapis.com/echo"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def plain_get(proxy: ProxyProcess, source: str, authorization: str) -> int:
    """A plain-HTTP GET through the proxy from the local address ``source``; the status code."""
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", f"http://{ECHO}", headers={"Proxy-Authorization": authorization})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


@pytest.fixture
def two_user_proxy(proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    htpasswd = tmp_path / "htpasswd"
    lines = [f"{user}:{bcrypt.hashpw(pw, bcrypt.gensalt(rounds=4)).decode()}"
             for user, pw in (("alice", b"alice-pass"), ("bob", b"bob-pass"))]
    htpasswd.write_text("\n".join(lines) + "\n")
    pp = proxy_factory("--proxy-auth", f"@{htpasswd}")
    pp.wait_for_line("token available")
    return pp


def test_new_source_addresses_do_not_reset_a_user_names_failures(two_user_proxy: ProxyProcess, fake: FakeGoogle):
    pp = two_user_proxy
    assert plain_get(pp, "127.0.0.1", basic("alice", "alice-pass")) == 200  # verified, then:
    for n in range(2, 12):
        assert plain_get(pp, f"127.0.0.{n}", basic("alice", f"guess{n}")) == 407
    # Every further address in 127.0.0.0/8 finds alice's name locked: even her right password.
    for n in range(12, 21):
        assert plain_get(pp, f"127.0.0.{n}", basic("alice", "alice-pass")) == 407
    assert len(fake.requests) == 1


def test_one_users_bad_tries_do_not_lock_out_another(two_user_proxy: ProxyProcess, fake: FakeGoogle):
    pp = two_user_proxy
    for n in range(15):  # all from 127.0.0.1: a shared address is not a shared lock
        assert plain_get(pp, "127.0.0.1", basic("alice", f"typo{n}")) == 407
    assert plain_get(pp, "127.0.0.1", basic("alice", "alice-pass")) == 407
    assert plain_get(pp, "127.0.0.1", basic("bob", "bob-pass")) == 200
    assert plain_get(pp, "127.0.0.3", basic("bob", "bob-pass")) == 200
    assert len(fake.requests) == 2


# -- Proxy-Authorization is never forwarded -------------------------------------------------------------

PROXY_CRED = basic("alice", "s3cret-pass")


def curl(proxy: ProxyProcess, url: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-x", proxy.url, "--cacert", str(ca), "-w", "%{http_code}", *args, url],
        env=base_env(), capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.parametrize("auth", [True, False], ids=["proxy-auth", "no-proxy-auth"])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_proxy_authorization_never_reaches_google(auth: bool, scheme: str, proxy_factory: ProxyFactory,
                                                  fake: FakeGoogle):
    pp = proxy_factory(*(["--proxy-auth", "alice:s3cret-pass"] if auth else []))
    pp.wait_for_line("token available")
    # https: the CONNECT carries the proxy's credential, the request inside the tunnel carries
    # one too; http: the request itself carries it.
    connect = ["--proxy-header", f"Proxy-Authorization: {PROXY_CRED}"] if auth and scheme == "https" else []
    out = curl(pp, f"{scheme}://{ECHO}", pp.ca_cert, *connect, "-H", f"Proxy-Authorization: {PROXY_CRED}")
    assert out.stdout == "200", out.stderr
    seen = fake.requests[-1]
    assert seen.server == "googleapis" and seen.token_valid
    forwarded = "proxy-authorization" in seen.headers  # not the header itself: it holds a password
    assert not forwarded


def test_curl_does_send_proxy_authorization_inside_a_tunnel(proxy: ProxyProcess, fake: FakeGoogle):
    """The control for the test above: a passthrough tunnel (not ours to read) shows what curl sent."""
    out = curl(proxy, "https://www.example.test/echo", fake.other_ca_pem, "-H", f"Proxy-Authorization: {PROXY_CRED}")
    assert out.stdout == "200", out.stderr
    seen = fake.requests[-1]
    assert seen.server == "other"
    sent = "proxy-authorization" in seen.headers
    assert sent
