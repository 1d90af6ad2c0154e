"""Policy and MetadataGuard: metadata names and addresses, the connect-time check, allowed hosts."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from addons.metadata import Pinned, Refusal, is_metadata_host, pin_address
from addons.metadata_guard import MetadataGuard
from addons.policy import Policy
from addons.resolve import Resolve


@pytest.mark.parametrize("host", [
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0xA9FEA9FE", "0251.0376.0251.0376", "169.254.43518",
    "0xa9.0xfe.0xa9.0xfe", "[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe", "[64:ff9b::a9fe:a9fe]",
    "::169.254.169.254", "2002:a9fe:a9fe::1", "fe80::1", "fe80::1%eth0", "fd00:ec2::254", "169.254.0.1",
    "metadata.google.internal", "METADATA.GOOGLE.INTERNAL.", "metadata", "metadata.goog",
    "fd20:ce::254", "[FD20:CE::254]", "fd20:ce::254%eth0",  # GCE's IPv6 metadata server (not link-local)
    "::ffff:0:a9fe:a9fe", "::ffff:0:169.254.169.254",  # IPv4-translated (SIIT)
    "64:ff9b:1::a9fe:a9fe", "64:ff9b:1:a9fe:a9:fe00::", "64:ff9b:1:a9:fe:a9fe::", "64:ff9b:1:0:a9:fea9:fe00:0",
    "::5efe:a9fe:a9fe", "2001:db8::200:5efe:169.254.169.254", "fe80::5efe:a9fe:a9fe",  # ISATAP
    "2001:0:4136:e378:8000:63bf:5601:5601",  # Teredo: client 169.254.169.254 stored inverted
    "169.254.169.254 junk",  # inet_aton stops at the space, and so may a resolver
])
def test_metadata_spellings(host: str):
    assert is_metadata_host(host)


@pytest.mark.parametrize("host", [
    None, "", "storage.googleapis.com", "metadata.google.internal.evil.test", "evilmetadata.google.internal",
    "127.0.0.1", "10.0.0.1", "169.255.169.254", "169.253.255.255", "::1", "0", "[::]", "2130706433",
    "metadata-google-internal",
    "::ffff:0:808:808", "64:ff9b:1::808:808", "::5efe:808:808", "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
    "fd20:ce::253", "fd20:ce::254:0", "2001:db8::a9fe:a9fe", "1.2.3.4\x00", "\udcff",
])
def test_not_metadata(host: str | None):
    assert not is_metadata_host(host)


def resolver_returning(*addresses: str):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)
    return resolve


async def _failing(host: str, port: int) -> list[str]:
    raise OSError("no such host")


async def _broken(host: str, port: int) -> list[str]:
    raise RuntimeError("a resolver bug")


@pytest.mark.parametrize("host,resolver,expected", [
    ("evil.test", resolver_returning("169.254.169.254"), Refusal.METADATA),
    ("evil.test", resolver_returning("93.184.216.34", "169.254.169.254"), Refusal.METADATA),  # any bad one
    ("evil.test", resolver_returning("::ffff:169.254.169.254"), Refusal.METADATA),
    ("evil.test", resolver_returning("fd20:ce::254"), Refusal.METADATA),
    ("evil.test", resolver_returning("64:ff9b:1::a9fe:a9fe"), Refusal.METADATA),
    ("good.test", resolver_returning("93.184.216.34", "93.184.216.35"), Pinned("93.184.216.34")),  # pinned
    ("unknown.test", _failing, Refusal.UNRESOLVED),  # not handed back for a second, unchecked lookup
    ("empty.test", resolver_returning(), Refusal.UNRESOLVED),
    ("buggy.test", _broken, Refusal.UNRESOLVED),
    ("10.1.2.3", _failing, Pinned("10.1.2.3")),  # a literal needs no lookup
    ("0x7f.1", _failing, Pinned("127.0.0.1")),  # pinned in the form nothing reads differently
    ("10.1.2.3 junk", _failing, Pinned("10.1.2.3")),
    ("169.254.169.254", resolver_returning("127.0.0.1"), Refusal.METADATA),
])
def test_pin_address(host, resolver, expected):  # type: ignore[no-untyped-def]
    assert asyncio.run(pin_address(host, 80, resolver)) == expected


def connect(guard: MetadataGuard, host: str, port: int):  # type: ignore[no-untyped-def]
    f = tflow.tflow()
    f.server_conn.address = (host, port)
    asyncio.run(guard.server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)))
    return f.server_conn


def test_guard_refuses_before_connecting_and_pins_otherwise():
    policy, guard = Policy(), MetadataGuard(resolver_returning("169.254.169.254"))
    with taddons.context(policy, guard):
        server = connect(guard, "rebind.test", 80)
        assert server.error == ("gcp-auth-proxy refuses to connect to rebind.test: it is, or resolves to, "
                                "the metadata server or another link-local address.")
        guard.resolver = resolver_returning("93.184.216.34")
        server = connect(guard, "example.test", 443)
        assert server.error is None and server.address == ("93.184.216.34", 443)


def test_guard_refuses_a_name_it_cannot_resolve():
    policy, guard = Policy(), MetadataGuard(_failing)
    with taddons.context(policy, guard):
        server = connect(guard, "gone.example.test", 443)
        assert server.error == "gcp-auth-proxy refuses to connect to gone.example.test: the name could not be resolved."
        assert server.address == ("gone.example.test", 443)


@pytest.mark.parametrize("target", [
    "169.254.169.254:80", "[::ffff:169.254.169.254]:80", "[fe80::1]:80", "[fd20:ce::254]:80",
    "[64:ff9b:1::a9fe:a9fe]:80", "internal.test:80",  # a name: the guard resolves it (to 169.254.169.254)
])
def test_resolve_override_to_a_metadata_address_is_refused(target: str):
    """--resolve runs first; the guard checks where the override points, whatever the client asked for."""
    looked_up: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["169.254.169.254"]

    async def body() -> None:
        addons = Policy(), Resolve(), MetadataGuard(resolver)
        with taddons.context(*addons) as tctx:
            tctx.configure(addons[1], resolve=[f"rebind.example.test={target}"])
            f = tflow.tflow()
            f.server_conn.address = ("rebind.example.test", 443)
            await tctx.master.addons.trigger_event(
                server_hooks.ServerConnectHook(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)))
            assert f.server_conn.error and "refuses to connect" in f.server_conn.error
            assert f.server_conn.address[1] == 80  # the override ran first: the guard saw its target
            assert looked_up == (["internal.test"] if target.startswith("internal") else [])
    asyncio.run(body())


def test_guard_off_with_allow_metadata():
    async def body() -> None:
        policy, guard = Policy(), MetadataGuard(resolver_returning("169.254.169.254"))
        with taddons.context(policy, guard) as tctx:
            tctx.configure(policy, allow_metadata=True)
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
        asyncio.run(policy.requestheaders(f))
        assert f.response is not None and f.response.status_code == 403
        assert b"forbiddenByProxyPolicy" in f.response.content


def test_allowed_metadata_request_loses_client_metadata_headers():
    policy = Policy()
    with taddons.context(policy) as tctx:
        tctx.configure(policy, allow_metadata=True)
        f = tflow.tflow()
        f.request.host = "metadata.google.internal"
        f.request.headers["Metadata-Flavor"] = "Google"
        f.request.headers["X-Google-Metadata-Request"] = "True"
        f.request.headers["X-Forwarded-For"] = "10.0.0.1"
        asyncio.run(policy.requestheaders(f))
        assert f.response is None
        for name in ("metadata-flavor", "x-google-metadata-request", "x-forwarded-for"):
            assert name not in f.request.headers


def test_allow_hosts():
    policy = Policy()
    with taddons.context(policy) as tctx:
        tctx.configure(policy, allow_host=["*.googleapis.com"])
        assert policy.denial("storage.googleapis.com") is None
        assert policy.denial("googleapis.com.evil.test")
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(policy, allow_host=["*"])
