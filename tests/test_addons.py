"""Addons in isolation with mitmproxy's test context: options, decisions, script loading."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons import destination, google_auth, metadata, resolve
from addons.token_cache import TokenCache
from tests.test_token_cache import FakeClock, FakeCredentials

ROOT = Path(__file__).resolve().parent.parent


def auth_with_fake_cache(tctx: taddons.context, addon: google_auth.GoogleAuth) -> FakeCredentials:
    """Configure the addon with defaults and swap its cache for one over a fake credential."""
    tctx.configure(addon, inject_host=list(google_auth.DEFAULT_HOSTS))
    clock = FakeClock()
    creds = FakeCredentials(clock)
    addon.cache = TokenCache(lambda: creds, None, clock=clock, sleep=clock.sleep)
    return creds


def tls_flow(sni: str | None, host_header: str = "storage.googleapis.com", tunnel: str | None = None):
    """A request inside a CONNECT tunnel to ``tunnel`` (default: the SNI), labelled by Destinations."""
    f = tflow.tflow()
    f.client_conn.tls = True
    f.client_conn.sni = sni
    f.server_conn.sni = sni
    f.request.scheme = "https"
    f.request.host = "127.0.0.1"  # an address override rewrites request.host; it must not matter
    f.request.port = 443
    f.request.headers["host"] = host_header
    labeller = destination.Destinations()
    labeller.tunnels[f.client_conn] = destination.Tunnel(tunnel or sni or "", 443)
    labeller.requestheaders(f)
    return f


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_bad_host_pattern_is_an_options_error():
    addon = google_auth.GoogleAuth()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(addon, inject_host=["*"])


def test_bad_resolve_rule_is_an_options_error():
    addon = resolve.Resolve()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(addon, resolve=["nonsense"])


def test_token_added_when_sni_matches():
    addon = google_auth.GoogleAuth()
    with taddons.context(addon) as tctx:
        auth_with_fake_cache(tctx, addon)
        f = tls_flow("storage.googleapis.com")
        run(addon.requestheaders(f))
        assert f.request.headers["authorization"] == "Bearer ya29.fake-1"
        assert f.metadata["gauth"]["auth"] == "injected"
        assert "ya29" not in repr(f.metadata)


@pytest.mark.parametrize("sni", [None, "evil.test", "storage.googleapis.com.evil.test"])
def test_no_token_when_sni_does_not_match_even_if_host_header_does(sni):
    addon = google_auth.GoogleAuth()
    with taddons.context(addon) as tctx:
        creds = auth_with_fake_cache(tctx, addon)
        f = tls_flow(sni, host_header="storage.googleapis.com", tunnel="storage.googleapis.com")
        run(addon.requestheaders(f))
        assert "authorization" not in f.request.headers
        assert f.response is not None and f.response.status_code == 421
        assert creds.refreshes == 0


@pytest.mark.parametrize(
    "mode, expected_auth, status",
    [("keep", "client", None), ("replace", "injected", None), ("reject", "denied", 403)],
)
def test_client_authorization_modes(mode, expected_auth, status):
    addon = google_auth.GoogleAuth()
    with taddons.context(addon) as tctx:
        auth_with_fake_cache(tctx, addon)
        tctx.configure(addon, client_auth=mode)
        f = tls_flow("storage.googleapis.com")
        f.request.headers["authorization"] = "Bearer client-own"
        run(addon.requestheaders(f))
        assert f.metadata["gauth"]["auth"] == expected_auth
        assert (f.response.status_code if f.response else None) == status


@pytest.mark.parametrize(
    "host, path, expected",
    [
        ("oauth2.googleapis.com", "/token", True),
        ("sts.googleapis.com", "/v1/token", True),
        ("iamcredentials.googleapis.com", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:generateAccessToken", True),
        ("iamcredentials.googleapis.com", "/v1/projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com:signBlob", True),
        ("storage.googleapis.com", "/token", False),
        ("iam.googleapis.com", "/v1/projects/p/serviceAccounts", False),
    ],
)
def test_token_endpoints_are_recognised(host, path, expected):
    assert google_auth.is_token_endpoint(host, path) is expected


def test_no_token_for_token_endpoint():
    addon = google_auth.GoogleAuth()
    with taddons.context(addon) as tctx:
        auth_with_fake_cache(tctx, addon)
        f = tls_flow("oauth2.googleapis.com", host_header="oauth2.googleapis.com")
        f.request.path = "/token"
        run(addon.requestheaders(f))
        assert "authorization" not in f.request.headers


@pytest.mark.parametrize(
    "host, blocked",
    [
        ("169.254.169.254", True), ("metadata.google.internal", True), ("METADATA.GOOGLE.INTERNAL.", True),
        ("2852039166", True), ("0xa9fea9fe", True), ("[::ffff:169.254.169.254]", True), ("fd00:ec2::254", True),
        ("storage.googleapis.com", False), ("127.0.0.1", False), ("metadata.example.com", False),
    ],
)
def test_metadata_hosts_are_recognised_in_every_spelling(host, blocked):
    assert metadata.is_metadata_host(host) is blocked


@pytest.mark.parametrize("name", ["google_auth", "policy", "resolve", "proxy_auth", "audit_log"])
def test_addon_file_loads_with_mitmdump_s(name):
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / f"{name}.py"))
        assert script.addons  # each file ends in `addons = [X(), ...]`
