"""Policy and MetadataGuard: metadata names and addresses, the connect-time check, allowed hosts."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from addons.metadata import is_metadata_host, pin_address
from addons.metadata_guard import MetadataGuard
from addons.policy import Policy


@pytest.mark.parametrize("host", [
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0xA9FEA9FE", "0251.0376.0251.0376", "169.254.43518",
    "0xa9.0xfe.0xa9.0xfe", "[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "[64:ff9b::a9fe:a9fe]",
    "::169.254.169.254", "2002:a9fe:a9fe::1", "fe80::1", "fe80::1%eth0", "fd00:ec2::254", "169.254.0.1",
    "metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata", "metadata.goog",
])
def test_metadata_spellings(host: str):
    assert is_metadata_host(host)


@pytest.mark.parametrize("host", [
    None, "", "storage.googleapis.com", "metadata.google.internal.evil.test", "evilmetadata.google.internal",
    "127.0.0.1", "10.0.0.1", "169.255.169.254", "169.253.255.255", "::1", "0", "[::]", "2130706433",
    "metadata-google-internal",
])
def test_not_metadata(host: str | None):
    assert not is_metadata_host(host)


def resolver_returning(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


async def _failing(host: str, port: int) -> list[str]:
    raise OSError("no such host")


@pytest.mark.parametrize("host,resolver,expected", [
    ("evil.test", resolver_returning("169.254.169.254"), None),
    ("evil.test", resolver_returning("93.184.216.34", "169.254.169.254"), None),  # any bad address refuses
    ("evil.test", resolver_returning("::ffff:169.254.169.254"), None),
    ("good.test", resolver_returning("93.184.216.34", "93.184.216.35"), "93.184.216.34"),  # pinned
    ("unknown.test", _failing, "unknown.test"),  # left to fail as it would
    ("10.1.2.3", _failing, "10.1.2.3"),
    ("169.254.169.254", resolver_returning("127.0.0.1"), None),
])
def test_pin_address(host, resolver, expected):  # type: ignore[no-untyped-def]
    assert asyncio.run(pin_address(host, 80, resolver)) == expected


def test_guard_refuses_before_connecting_and_pins_otherwise():
    async def body() -> None:
        policy, guard = Policy(), MetadataGuard(resolver_returning("169.254.169.254"))
        with taddons.context(policy, guard):
            f = tflow.tflow()
            f.server_conn.address = ("rebind.test", 80)
            await guard.server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn))
            assert f.server_conn.error and "refuses to connect" in f.server_conn.error
            guard.resolver = resolver_returning("93.184.216.34")
            f = tflow.tflow()
            f.server_conn.address = ("example.test", 443)
            await guard.server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn))
            assert f.server_conn.error is None and f.server_conn.address == ("93.184.216.34", 443)
    asyncio.run(body())


def test_guard_off_with_allow_metadata():
    async def body() -> None:
        policy, guard = Policy(), MetadataGuard(resolver_returning("169.254.169.254"))
        with taddons.context(policy, guard) as tctx:
            tctx.configure(policy, policy_allow_metadata=True)
            f = tflow.tflow()
            f.server_conn.address = ("metadata.google.internal", 80)
            await guard.server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn))
            assert f.server_conn.error is None
    asyncio.run(body())


def test_metadata_request_denied_with_json_403():
    policy = Policy()
    with taddons.context(policy):
        f = tflow.tflow()
        f.request.host = "169.254.169.254"
        policy.requestheaders(f)
        assert f.response is not None and f.response.status_code == 403
        assert b"forbiddenByProxyPolicy" in f.response.content


def test_allowed_metadata_request_loses_client_metadata_headers():
    policy = Policy()
    with taddons.context(policy) as tctx:
        tctx.configure(policy, policy_allow_metadata=True)
        f = tflow.tflow()
        f.request.host = "metadata.google.internal"
        f.request.headers["Metadata-Flavor"] = "Google"
        f.request.headers["X-Google-Metadata-Request"] = "True"
        f.request.headers["X-Forwarded-For"] = "10.0.0.1"
        policy.requestheaders(f)
        assert f.response is None
        for name in ("metadata-flavor", "x-google-metadata-request", "x-forwarded-for"):
            assert name not in f.request.headers


def test_allow_hosts():
    policy = Policy()
    with taddons.context(policy) as tctx:
        tctx.configure(policy, policy_allow_hosts=["*.googleapis.com"])
        assert policy.denial("storage.googleapis.com") is None
        assert policy.denial("googleapis.com.evil.test")
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(policy, policy_allow_hosts=["*"])
