"""--upstream-proxy: every connection through a CONNECT proxy, its credentials, its failures, bypass.

The upstream proxy is the fake's own (fakegoogle/connect_proxy.py): it records every CONNECT it
gets and relays only to loopback, so nothing here leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from addons import hosts
from addons.upstream_proxy import (
    ProxySpec,
    Routing,
    UpstreamProxy,
    UpstreamProxyError,
    check_connect_response,
    connect_bytes,
    parse_proxy_url,
    parse_routing,
    read_credentials,
)
from fakegoogle import FakeGoogle
from fakegoogle.connect_proxy import ConnectProxy
from proxy import settings
from proxy.errors import ProxyError
from tests.conftest import ProxyFactory
from tests.proxyproc import RunningProxy, base_env

OBJECT_PATH = "/storage/v1/b/demo-bucket/o/hello.txt?alt=media"
PASSWORD = "s3cret-upstream-pw"


# -- option parsing (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize("url, expected", [
    ("http://proxy.example:3128", ProxySpec("proxy.example", 3128)),
    ("HTTP://Proxy.Example:3128/", ProxySpec("proxy.example", 3128)),
    ("http://10.0.0.1:8080", ProxySpec("10.0.0.1", 8080)),
    ("http://[::1]:3128", ProxySpec("::1", 3128)),
    ("http://alice:pa%40ss%3Aword@proxy.example:3128", ProxySpec("proxy.example", 3128, ("alice", "pa@ss:word"))),
    ("http://alice:@proxy.example:3128", ProxySpec("proxy.example", 3128, ("alice", ""))),
])
def test_parse_good_proxy_urls(url: str, expected: ProxySpec) -> None:
    assert parse_proxy_url(url) == expected


@pytest.mark.parametrize("url", [
    "https://proxy.example:3128", "socks5://proxy.example:1080", "proxy.example:3128", "http://proxy.example",
    "http://proxy.example:0", "http://proxy.example:99999", "http://proxy.example:3128/path",
    "http://proxy.example:3128?x=1", "http://:3128", "http://:pw@proxy.example:3128", "http://bad host:3128",
])
def test_parse_bad_proxy_urls_raise_without_showing_the_password(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_proxy_url(url.replace("http://", "http://u:" + PASSWORD + "@", 1) if "@" not in url else url)
    assert PASSWORD not in str(info.value)


def test_proxy_spec_repr_and_str_never_show_the_password() -> None:
    spec = parse_proxy_url(f"http://alice:{PASSWORD}@proxy.example:3128")
    assert PASSWORD not in repr(spec) and PASSWORD not in str(spec) and PASSWORD not in repr(Routing(spec))
    assert str(spec) == "proxy.example:3128"


@pytest.mark.parametrize("host, direct", [
    ("storage.googleapis.com", False),
    ("STORAGE.GOOGLEAPIS.COM.", False),
    ("www.example.test", True),
    ("a.b.example.test", True),
    ("example.test", False),  # *.example.test is whole labels before the suffix
    ("evilexample.test", False),
    ("www.example.test.evil.net", False),
    ("internal.corp", True),
    ("10.1.2.3", True),
    ("10.1.2.4", False),
    ("::1", True),
    ("[0:0:0:0:0:0:0:1]", True),
    ("[2001:DB8::1]", True),
    ("2001:db8::2", False),
    ("127.0.0.2", True),  # loopback is always this machine's
    ("localhost", True),
    ("localhost.evil.test", False),
    ("169.254.169.254", True),  # the metadata server is never asked of an upstream proxy
    ("metadata.google.internal", True),
    ("[::ffff:169.254.169.254]", True),
])
def test_routing_bypass_table(host: str, direct: bool) -> None:
    routing = parse_routing("http://proxy.example:3128", "", ["*.example.test", "internal.corp", "10.1.2.3", "2001:db8:0::1"])
    assert (routing.via(host) is None) is direct


def test_no_upstream_proxy_routes_nothing() -> None:
    assert Routing().via("storage.googleapis.com") is None


def test_credentials_file_is_one_line_user_colon_pass(tmp_path: Path) -> None:
    good = tmp_path / "auth"
    good.write_text(f"alice:{PASSWORD}\n")
    assert read_credentials(f"@{good}") == ("alice", PASSWORD)
    assert parse_routing("http://proxy.example:3128", f"@{good}").proxy == ProxySpec(
        "proxy.example", 3128, ("alice", PASSWORD))
    (tmp_path / "bad").write_text("no colon here\n")
    for spec, words in [(f"@{tmp_path / 'bad'}", "USER:PASS"), (f"@{tmp_path / 'missing'}", "cannot read"),
                        (f"alice:{PASSWORD}", "@FILE")]:
        with pytest.raises(ValueError, match=words) as info:
            read_credentials(spec)
        assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("values, flag", [
    ({"upstream_proxy": "https://proxy.example:3128"}, "--upstream-proxy:"),
    ({"upstream_proxy": "http://proxy.example:3128", "upstream_proxy_auth": "alice:pw"}, "--upstream-proxy-auth:"),
    ({"upstream_proxy_auth": "@/nonexistent"}, "--upstream-proxy-auth needs --upstream-proxy"),
    ({"upstream_proxy": "http://proxy.example:3128", "upstream_proxy_bypass": ["bad host"]}, "--upstream-proxy-bypass:"),
])
def test_settings_errors_name_the_flag(values: dict[str, object], flag: str) -> None:
    with pytest.raises(ProxyError) as info:
        settings.from_sources(values, environ={})
    assert str(info.value).startswith(flag)


def test_credentials_in_the_url_and_a_file_is_an_error(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("bob:pw\n")
    with pytest.raises(ProxyError, match="once"):
        settings.from_sources({"upstream_proxy": "http://a:b@proxy.example:3128",
                               "upstream_proxy_auth": f"@{auth}"}, environ={})


def test_connect_request_brackets_ipv6_and_carries_credentials() -> None:
    raw = connect_bytes(("::1", 443), ProxySpec("p", 1, ("alice", "pw")))
    assert raw.startswith(b"CONNECT [::1]:443 HTTP/1.1\r\n")
    assert b"\r\nhost: [::1]:443\r\n" in raw.lower()
    assert b"Proxy-Authorization: Basic YWxpY2U6cHc=\r\n" in raw
    assert b"Proxy-Authorization" not in connect_bytes(("storage.googleapis.com", 443), ProxySpec("p", 1))


@pytest.mark.parametrize("head, words", [
    ([b"HTTP/1.1 407 Proxy Authentication Required", b"Proxy-Authenticate: Basic"], "refused CONNECT to x:443: 407"),
    ([b"HTTP/1.0 403 Forbidden"], "403 Forbidden"),
    ([b"SSH-2.0-OpenSSH"], "not HTTP"),
])
def test_connect_refusals_name_the_upstream_proxy(head: list[bytes], words: str) -> None:
    with pytest.raises(UpstreamProxyError, match=words) as info:
        check_connect_response(head, ProxySpec("corp-proxy", 3128), ("x", 443))
    assert "the upstream proxy corp-proxy:3128" in str(info.value)


def test_connect_2xx_is_a_tunnel() -> None:
    check_connect_response([b"HTTP/1.1 200 Connection established"], ProxySpec("p", 1), ("x", 443))


# -- end to end ----------------------------------------------------------------------------------------


@pytest.fixture
def upstream(fake: FakeGoogle) -> Iterator[ConnectProxy]:
    fake.connect_proxy.reset()
    yield fake.connect_proxy
    fake.connect_proxy.reset()


def upstream_url(fake: FakeGoogle, credentials: str = "") -> str:
    host, port = fake.connect_proxy_addr
    return f"http://{credentials}{host}:{port}"


def authority(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def session_via(proxy: RunningProxy, verify: str | Path) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy.url, "http": proxy.url}
    s.verify = str(verify)
    return s


def raw_request(proxy: RunningProxy, request: bytes) -> tuple[int, dict[str, object]]:
    """Send one request head to the proxy; its status and JSON body."""
    with socket.create_connection((proxy.host, proxy.port), timeout=20) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_every_connection_goes_through_the_upstream_proxy(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    # plain.example.test: a plain-HTTP origin (the fake's metadata app answers /_fake/stats).
    pp = proxy_factory("--upstream-proxy", upstream_url(fake),
                       "--resolve", f"plain.example.test={authority(fake.metadata_addr)}")
    pp.wait_for_line("token available")
    google, other, plain = authority(fake.googleapis_addr), authority(fake.other_addr), authority(fake.metadata_addr)
    assert upstream.relayed() == [google], "the token fetch must go through the upstream proxy"
    with session_via(pp, pp.ca_cert) as s:
        r = s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20)  # intercepted
        assert r.status_code == 200, r.text
        r = s.get("http://storage.googleapis.com" + OBJECT_PATH, timeout=20)  # plain http, upgraded to TLS
        assert r.status_code == 200, r.text
    with session_via(pp, fake.other_ca_pem) as s:
        r = s.get("https://www.example.test/tunnelled", timeout=20)  # tunnelled untouched
        assert r.status_code == 200 and r.json()["path"] == "/tunnelled"
        r = s.get("http://plain.example.test/_fake/stats", timeout=20)  # plain HTTP, no token
        assert r.status_code == 200 and "token_fetches" in r.json()
    asked = upstream.asked
    assert {a.method for a in asked} == {"CONNECT"}, "nothing may be forwarded to the upstream proxy in clear"
    assert [a.authority for a in asked] == [google, google, google, other, plain]
    assert all(a.relayed and a.proxy_authorization is None for a in asked)
    api = [q for q in fake.requests if q.path.startswith("/storage/v1/b/demo-bucket")]
    assert len(api) == 2 and all(q.token_valid for q in api)
    tokens = [t for t in fake.issued_tokens if t]
    assert not [t[:8] for t in tokens for sent in upstream.sent_bytes() if t.encode() in sent], \
        "a token crossed the upstream proxy outside TLS"


def test_resolve_picks_the_address_asked_for_and_a_name_without_a_rule_is_asked_as_the_name(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake))
    pp.wait_for_line("token available")
    # example.test has no --resolve rule (*.example.test needs a label before it): the upstream
    # proxy gets the name and resolves it itself (the fake maps it to its other origin).
    with session_via(pp, fake.other_ca_pem) as s:
        r = s.get("https://example.test/by-name", timeout=20)
    assert r.status_code == 200, r.text
    assert upstream.relayed()[-1] == "example.test:443"


@pytest.mark.parametrize("where", ["url", "file"])
def test_upstream_proxy_credentials_go_on_every_connect_including_the_token_fetch(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy, tmp_path: Path, where: str,
) -> None:
    upstream.require_auth("alice", PASSWORD)
    if where == "url":
        args = ["--upstream-proxy", upstream_url(fake, f"alice:{PASSWORD}@")]
    else:
        (tmp_path / "upstream-auth").write_text(f"alice:{PASSWORD}\n")
        args = ["--upstream-proxy", upstream_url(fake), "--upstream-proxy-auth", f"@{tmp_path / 'upstream-auth'}"]
    pp = proxy_factory(*args)
    pp.wait_for_line("token available")
    with session_via(pp, pp.ca_cert) as s:
        assert s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20).status_code == 200
    asked = upstream.asked
    assert len(asked) == 2 and all(a.relayed for a in asked), asked
    assert f"goes through the upstream proxy {authority(fake.connect_proxy_addr)}" in pp.text()
    assert PASSWORD not in pp.text()


def test_impersonation_and_its_iam_call_go_through_the_upstream_proxy(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy, tmp_path: Path,
) -> None:
    creds = fake.write_impersonated_service_account(tmp_path / "impersonated.json")
    before = fake.generate_access_token_calls  # the fake's counters are for the whole session
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), credentials=creds)
    pp.wait_for_line("token available")
    assert fake.generate_access_token_calls - before == 1
    # the user's refresh (oauth2) and generateAccessToken (iamcredentials): two hosts, two tunnels
    assert upstream.relayed() == [authority(fake.googleapis_addr)] * 2


BEHAVIOURS = [("407", 502, "refused CONNECT to {target}: 407 Proxy Authentication Required"),
              ("403", 502, "refused CONNECT to {target}: 403 Forbidden"),
              ("502", 502, "refused CONNECT to {target}: 502 Bad Gateway"),
              ("close", 502, "closed the connection before answering CONNECT to {target}"),
              ("garbage", 502, "answered CONNECT to {target} with something that is not HTTP"),
              ("hang", 504, "timed out: no answer to CONNECT to {target} within 1 s")]


@pytest.mark.parametrize("behaviour, status, words", BEHAVIOURS, ids=[b[0] for b in BEHAVIOURS])
def test_upstream_proxy_failures_reach_the_client_as_json_naming_it(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy, behaviour: str, status: int, words: str,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--connect-timeout", "1")
    pp.wait_for_line("token available")
    upstream.behaviour = behaviour
    named = f"the upstream proxy {authority(fake.connect_proxy_addr)}"
    google, other = authority(fake.googleapis_addr), authority(fake.other_addr)
    attempts = [
        # a tunnelled host and an intercepted one: the failure is the answer to the client's CONNECT
        (b"CONNECT www.example.test:443 HTTP/1.1\r\nHost: www.example.test:443\r\n\r\n", other),
        (b"CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n\r\n", google),
        # plain http:// (a CONNECT to the origin upstream): the error page of the request
        (b"GET http://www.example.test/x HTTP/1.1\r\nHost: www.example.test\r\n\r\n", other),
    ]
    for request, target in attempts:
        code, body = raw_request(pp, request)
        error = body["error"]
        assert isinstance(error, dict)
        assert code == status and error["code"] == status, body  # never the upstream's own 407
        assert named in error["message"] and words.format(target=target) in error["message"], body
    assert [a.answer for a in upstream.asked[1:]] == [behaviour] * 3


def test_a_token_fetch_refused_by_the_upstream_proxy_names_it(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    upstream.require_auth("alice", PASSWORD)  # and the proxy is given no credentials
    # storage goes direct, so the request itself gets through and only the token is missing
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--upstream-proxy-bypass", "storage.googleapis.com")
    line = pp.wait_for_line("token unavailable")
    assert f"the upstream proxy {authority(fake.connect_proxy_addr)} refused CONNECT" in line
    with session_via(pp, pp.ca_cert) as s:
        r = s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20)
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    assert f"upstream proxy {authority(fake.connect_proxy_addr)}" in message and "407" in message
    assert not [q for q in fake.requests if q.path.startswith("/storage/")]


def test_bypass_patterns_connect_directly(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--upstream-proxy-bypass", "*.example.test")
    pp.wait_for_line("token available")
    with session_via(pp, fake.other_ca_pem) as s:
        assert s.get("https://www.example.test/direct", timeout=20).status_code == 200
    with session_via(pp, pp.ca_cert) as s:
        assert s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20).status_code == 200
    assert upstream.relayed() == [authority(fake.googleapis_addr)] * 2  # the token fetch and storage only
    assert any(q.path == "/direct" for q in fake.requests)


def test_bypassed_token_endpoint_is_fetched_directly(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--upstream-proxy-bypass", "oauth2.googleapis.com")
    pp.wait_for_line("token available")
    assert upstream.asked == []


def test_metadata_guard_checks_the_address_asked_of_the_upstream_proxy(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    # An override to the metadata server: refused before anything is asked (the fake would refuse
    # to relay it anyway: it only connects to loopback).
    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--resolve", "meta.example.test=169.254.169.254:80")
    pp.wait_for_line("token available")
    code, body = raw_request(pp, b"GET http://meta.example.test/ HTTP/1.1\r\nHost: meta.example.test\r\n\r\n")
    error = body["error"]
    assert isinstance(error, dict)
    assert code == 502 and "refuses to connect to 169.254.169.254" in error["message"]
    assert upstream.relayed() == [authority(fake.googleapis_addr)]  # the token fetch only


def test_tls_to_the_proxy_port_is_still_refused(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake))
    pp.wait_for_line("token available")
    ctx = ssl.create_default_context(cafile=str(pp.ca_cert))
    with socket.create_connection((pp.host, pp.port), timeout=20) as raw, pytest.raises((ssl.SSLError, OSError)):
        ctx.wrap_socket(raw, server_hostname="storage.googleapis.com")
    assert len(upstream.asked) == 1


def test_host_confusion_is_still_refused_through_the_upstream_proxy(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake))
    pp.wait_for_line("token available")
    with session_via(pp, pp.ca_cert) as s:
        r = s.get("https://storage.googleapis.com" + OBJECT_PATH, headers={"Host": "evil.example.test"}, timeout=20)
    assert r.status_code == 421
    assert not [q for q in fake.requests if q.path.startswith("/storage/")]


def test_bypass_pattern_helper_accepts_addresses() -> None:
    assert parse_routing("", "", ["10.0.0.1", "[::1]", "*.corp.example"]).bypass == (
        hosts.HostPattern("10.0.0.1", False), hosts.HostPattern("::1", False), hosts.HostPattern("corp.example", True))


def test_http2_and_concurrent_clients_through_the_upstream_proxy(
    proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy,
) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake))
    pp.wait_for_line("token available")
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "--http2", "-x", pp.url, "--cacert", str(pp.ca_cert),
         "https://storage.googleapis.com" + OBJECT_PATH, "https://storage.googleapis.com" + OBJECT_PATH],
        env=base_env(), capture_output=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from fake Google\n" * 2

    def fetch(_: int) -> int:
        with session_via(pp, pp.ca_cert) as s:
            return s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(fetch, range(16))) == [200] * 16
    # the token fetch, curl's one connection, one per session
    assert upstream.relayed() == [authority(fake.googleapis_addr)] * 18


def test_an_upstream_proxy_that_is_down_is_named(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        host, port = s.getsockname()
    pp = proxy_factory("--upstream-proxy", f"http://{host}:{port}", "--upstream-proxy-bypass", "*.googleapis.com")
    pp.wait_for_line("token available")  # the token endpoint is bypassed: direct
    code, body = raw_request(pp, b"CONNECT www.example.test:443 HTTP/1.1\r\nHost: www.example.test:443\r\n\r\n")
    error = body["error"]
    assert isinstance(error, dict)
    assert code == 502 and f"the upstream proxy {host}:{port} could not be reached" in error["message"]


def test_a_401_is_replayed_through_the_upstream_proxy_with_a_fresh_token(
        proxy_factory: ProxyFactory, fake: FakeGoogle, upstream: ConnectProxy) -> None:
    pp = proxy_factory("--upstream-proxy", upstream_url(fake, f"alice:{PASSWORD}@"))
    pp.wait_for_line("token available")
    with session_via(pp, pp.ca_cert) as s:
        assert s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20).status_code == 200
        fake.revoke_all()
        fetched, connects = fake.token_fetches, len(upstream.asked)
        r = s.get("https://storage.googleapis.com" + OBJECT_PATH, timeout=20)
    assert r.status_code == 200, r.text  # the 401 never reached the client
    assert fake.token_fetches - fetched == 1
    google = authority(fake.googleapis_addr)
    # The replay opened its own tunnel to Google, with the upstream proxy's credentials (the token
    # fetch may reuse its pooled one).
    added = upstream.asked[connects:]
    assert added and all(a.authority == google and a.relayed and a.proxy_authorization for a in added)
    api = [q for q in fake.requests if q.path.startswith("/storage/v1/b/demo-bucket")]
    assert [q.token_valid for q in api] == [True, False, True]
    assert [q.host for q in api] == ["storage.googleapis.com"] * 3  # the replay went where the first one did
    assert "retry after 401 failed" not in pp.text()
    tokens = [t for t in fake.issued_tokens if t]
    assert not [t[:8] for t in tokens for sent in upstream.sent_bytes() if t.encode() in sent], \
        "a token crossed the upstream proxy outside TLS"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_read_timeout_cuts_a_tunnelled_connection_too(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                      upstream: ConnectProxy, http2: bool) -> None:
    from tests.streaming_clients import WAIT_URL, httpx_client

    pp = proxy_factory("--upstream-proxy", upstream_url(fake), "--read-timeout", "1")
    pp.wait_for_line("token available")
    with httpx_client(pp, http2=http2) as client:
        r = client.post(WAIT_URL + "?timeout=30s")  # the fake answers after 30 s; the proxy gives up after 1
    assert r.status_code == 504 and r.headers["content-type"].startswith("application/json"), r.text
    error = r.json()["error"]
    assert error["status"] == "DEADLINE_EXCEEDED" and "no answer within 1 s" in error["message"]
    assert authority(fake.googleapis_addr) in [a.authority for a in upstream.asked if a.relayed]
    # The upstream connection was closed: the fake saw its client go and ended the long poll now
    # (not 30 s later, inside whichever test runs next).
    assert len(fake.wait_for_requests("/v1/projects/p/locations/us-central1/operations/op-1:wait")) == 1


def test_bypass_is_decided_on_the_connect_target_for_every_connection_of_a_tunnel() -> None:
    # Inside an intercepted tunnel mitmproxy names a reconnection by the address --resolve chose;
    # the tunnel's name decides, so a bypassed host never switches to the upstream proxy midway.
    from mitmproxy import connection
    from mitmproxy.test import taddons, tflow

    addon = UpstreamProxy()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, upstream_proxy="http://proxy.example:3128", upstream_proxy_bypass=["*.googleapis.com"])
        flow = tflow.tflow()
        flow.request.method, flow.request.host, flow.request.port = "CONNECT", "storage.googleapis.com", 443
        addon.http_connect(flow)
        reconnect = connection.Server(address=("199.36.153.4", 443))
        assert addon.route(flow.client_conn, reconnect) is None
        other = tflow.tflow()
        assert addon.route(other.client_conn, reconnect) == ProxySpec("proxy.example", 3128)


def test_bad_option_values_are_option_errors() -> None:
    from mitmproxy import exceptions
    from mitmproxy.test import taddons

    addon = UpstreamProxy()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="only http://"):
        tctx.configure(addon, upstream_proxy="https://proxy.example:3128")


def test_addon_file_loads_with_mitmdump_s() -> None:
    from mitmproxy.test import taddons

    with taddons.context() as tctx:
        script = tctx.script(str(Path(__file__).resolve().parent.parent / "addons" / "upstream_proxy.py"))
        assert script.addons


@pytest.mark.parametrize("host, refused", [
    ("169.254.169.254", True), ("metadata.google.internal", True), ("0xa9fea9fe", True),
    ("storage.googleapis.com", False), ("resolves-to-metadata.example.test", False),
])
def test_metadata_guard_checks_an_upstream_target_without_resolving_it(host: str, refused: bool) -> None:
    from mitmproxy import connection
    from mitmproxy.proxy import server_hooks
    from mitmproxy.test import taddons, tflow

    from addons.metadata_guard import MetadataGuard
    from addons.policy import Policy

    looked_up: list[str] = []

    async def resolver(name: str, port: int) -> list[str]:
        looked_up.append(name)
        return ["169.254.169.254"]

    guard = MetadataGuard(resolver)
    with taddons.context(Policy(), guard):  # Policy declares allow_metadata (off)
        server = connection.Server(address=(host, 443))
        server.via = ("http", ("proxy.example", 3128))
        asyncio.run(guard.server_connect(server_hooks.ServerConnectionHookData(server=server,
                                                                               client=tflow.tclient_conn())))
    assert looked_up == []  # the upstream proxy resolves names, not us
    assert server.address == (host, 443)  # nothing pinned
    assert (server.error is not None) is refused


@pytest.mark.parametrize("behaviour, words", [
    ("407", "refused CONNECT to {target}: 407 Proxy Authentication Required"),
    ("502", "refused CONNECT to {target}: 502 Bad Gateway"),
    ("close", "closed the connection before answering CONNECT to {target}"),
    ("garbage", "answered CONNECT to {target} with something that is not HTTP"),
    ("hang", "timed out: no answer to CONNECT to {target} within 1 s"),
])
def test_token_transport_failures_name_the_upstream_proxy(
    fake: FakeGoogle, upstream: ConnectProxy, behaviour: str, words: str,
) -> None:
    from google.auth import exceptions as gexc

    from addons.resolve import parse_resolve_rules
    from addons.token_transport import make_request

    google = authority(fake.googleapis_addr)
    rules = parse_resolve_rules([f"*.googleapis.com={google}"])
    request = make_request(rules, str(fake.google_ca_pem), timeout=1,
                           routing=parse_routing(upstream_url(fake, f"alice:{PASSWORD}@")))
    upstream.behaviour = behaviour
    with pytest.raises(gexc.TransportError) as info:
        request("https://oauth2.googleapis.com/token", method="POST", body=b"x")
    message = str(info.value)
    assert message.startswith(f"the upstream proxy {authority(fake.connect_proxy_addr)} ")
    assert words.format(target=google) in message and PASSWORD not in message
    assert [(a.authority, a.proxy_authorization is not None) for a in upstream.asked] == [(google, True)]
