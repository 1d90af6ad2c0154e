"""ProxyAuth: parsing, htpasswd, the addon's hooks (the failure limits: test_proxy_auth_lockout.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons.proxy_auth import (
    Checker,
    Credential,
    ProxyAuth,
    parse_basic,
    parse_htpasswd,
    parse_proxy_auth,
)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("value,expected", [
    (basic("alice", "pw"), Credential("alice", "pw")),
    (basic("alice", "p:w:x"), Credential("alice", "p:w:x")),
    ("basic " + base64.b64encode(b"a:b").decode(), Credential("a", "b")),
    (basic("", ""), Credential("", "")),
    ("Bearer abc", None),
    ("Basic", None),
    ("Basic !!!notbase64", None),
    ("Basic " + base64.b64encode(b"no-colon").decode(), None),
    ("Basic " + base64.b64encode(b"\xff\xfe:x").decode(), None),
    ("", None),
])
def test_parse_basic(value: str, expected: Credential | None):
    assert parse_basic(value) == expected


@pytest.mark.parametrize("spec", ["alice", ":pw", "alice:", "", "@/nonexistent/htpasswd"])
def test_bad_proxy_auth_spec_is_value_error(spec: str):
    with pytest.raises(ValueError):
        parse_proxy_auth(spec)


def test_user_pass_checker():
    checker = parse_proxy_auth("alice:s3cret:with:colons")
    assert not checker.slow
    assert checker.check("alice", "s3cret:with:colons")
    assert not checker.check("alice", "s3cret")
    assert not checker.check("Alice", "s3cret:with:colons")
    assert not checker.check("", "")


def test_htpasswd_bcrypt_and_sha(tmp_path: Path):
    sha = base64.b64encode(hashlib.sha1(b"sha-pass").digest()).decode()
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "htpasswd"
    path.write_text(f"# comment\n\nbob:{hashed}\ncarol:{{SHA}}{sha}\n")
    checker = parse_proxy_auth(f"@{path}")
    assert checker.slow  # bcrypt: checked off the event loop
    assert checker.check("bob", "pw") and not checker.check("bob", "PW")
    assert checker.check("carol", "sha-pass") and not checker.check("carol", "pw")
    assert not checker.check("mallory", "pw")


@pytest.mark.parametrize("text,needle", [
    ("bob:$apr1$x$y\n", "unsupported hash"),
    ("bob:plaintext\n", "unsupported hash"),
    ("justaname\n", "line 1"),
    (":{SHA}abc\n", "line 1"),
    ("# only comments\n", "no users"),
])
def test_htpasswd_errors_name_the_problem(text: str, needle: str):
    with pytest.raises(ValueError, match=needle):
        parse_htpasswd(text)


# -- the addon -----------------------------------------------------------------------------------------


class CountingChecker:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, user: str, password: str) -> bool:
        self.calls += 1
        return (user, password) == ("alice", "pw")


def test_missing_credentials_get_bare_407_and_header_never_forwarded():
    asyncio.run(_test_missing_credentials_get_bare_407_and_header_never_forwarded())


async def _test_missing_credentials_get_bare_407_and_header_never_forwarded():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        f = tflow.tflow()
        await auth.requestheaders(f)
        assert f.response is not None and f.response.status_code == 407
        assert f.response.content == b"Proxy authentication required.\n"
        f = tflow.tflow()
        f.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.requestheaders(f)
        assert f.response is None
        assert "proxy-authorization" not in f.request.headers


def test_connect_authenticates_the_connection():
    asyncio.run(_test_connect_authenticates_the_connection())


async def _test_connect_authenticates_the_connection():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        connect = tflow.tflow()
        connect.request.method = "CONNECT"
        connect.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.http_connect(connect)
        assert connect.response is None
        inner = tflow.tflow(client_conn=connect.client_conn)
        await auth.requestheaders(inner)
        assert inner.response is None


def test_verified_credentials_are_remembered_not_rechecked():
    asyncio.run(_test_verified_credentials_are_remembered_not_rechecked())


async def _test_verified_credentials_are_remembered_not_rechecked():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        counting = CountingChecker()
        auth.checker = Checker(counting, slow=True)
        for _ in range(5):
            f = tflow.tflow()
            f.request.headers["proxy-authorization"] = basic("alice", "pw")
            await auth.requestheaders(f)
            assert f.response is None
        assert counting.calls == 1


def test_locked_user_name_is_not_checked_at_all():
    asyncio.run(_test_locked_user_name_is_not_checked_at_all())


async def _test_locked_user_name_is_not_checked_at_all():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        counting = CountingChecker()
        auth.checker = Checker(counting, slow=False)
        for _ in range(auth.limiter.max_failures):
            f = tflow.tflow()
            f.request.headers["proxy-authorization"] = basic("alice", "wrong")
            await auth.requestheaders(f)
        calls = counting.calls
        f = tflow.tflow()
        f.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.requestheaders(f)
        assert f.response is not None and f.response.status_code == 407
        assert counting.calls == calls


def test_bad_option_is_options_error():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(auth, proxy_auth="no-colon")


def test_proxy_authorization_is_stripped_when_proxy_auth_is_off():
    asyncio.run(_test_proxy_authorization_is_stripped_when_proxy_auth_is_off())


async def _test_proxy_authorization_is_stripped_when_proxy_auth_is_off():
    auth = ProxyAuth()
    with taddons.context(auth):
        assert auth.checker is None
        f = tflow.tflow()
        f.request.headers.add("proxy-authorization", basic("alice", "pw"))
        f.request.headers.add("Proxy-Authorization", basic("bob", "pw"))  # repeated: all go
        await auth.requestheaders(f)
        assert f.response is None
        assert "proxy-authorization" not in f.request.headers


def test_proxy_authorization_is_stripped_inside_an_authenticated_tunnel():
    asyncio.run(_test_proxy_authorization_is_stripped_inside_an_authenticated_tunnel())


async def _test_proxy_authorization_is_stripped_inside_an_authenticated_tunnel():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        connect = tflow.tflow()
        connect.request.method = "CONNECT"
        connect.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.http_connect(connect)
        assert connect.response is None and "proxy-authorization" not in connect.request.headers
        inner = tflow.tflow(client_conn=connect.client_conn)
        inner.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.requestheaders(inner)
        assert inner.response is None
        assert "proxy-authorization" not in inner.request.headers


def test_proxy_authorization_is_stripped_from_an_already_answered_request():
    asyncio.run(_test_proxy_authorization_is_stripped_from_an_already_answered_request())


async def _test_proxy_authorization_is_stripped_from_an_already_answered_request():
    auth = ProxyAuth()
    with taddons.context(auth) as tctx:
        tctx.configure(auth, proxy_auth="alice:pw")
        f = tflow.tflow(resp=True)
        f.request.headers["proxy-authorization"] = basic("alice", "pw")
        await auth.requestheaders(f)
        assert "proxy-authorization" not in f.request.headers
