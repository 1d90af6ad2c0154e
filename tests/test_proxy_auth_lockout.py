"""Proxy-auth failure limits: per supplied user name and a global budget, never per address."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Coroutine
from typing import Any

from mitmproxy import http
from mitmproxy.test import tflow

from addons.proxy_auth import Checker, FailureLimiter, ProxyAuth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingChecker:
    """alice:pw and bob:pw2 are right; counts every password it is asked to look at."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, user: str, password: str) -> bool:
        self.calls += 1
        return (user, password) in {("alice", "pw"), ("bob", "pw2")}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_auth(clock: Clock, *, max_failures: int = 10, max_total: int = 100, max_tracked: int = 10_000,
              slow: bool = False) -> tuple[ProxyAuth, CountingChecker]:
    auth = ProxyAuth(clock)
    checker = CountingChecker()
    auth.checker = Checker(checker, slow=slow)
    auth.limiter = FailureLimiter(clock, max_failures=max_failures, max_total=max_total, max_tracked=max_tracked)
    return auth, checker


async def attempt(auth: ProxyAuth, user: str, password: str, address: str = "127.0.0.1") -> int | None:
    """One plain-HTTP request with Basic credentials from ``address``; the status we answered, or None (passed)."""
    f = tflow.tflow()
    f.client_conn.peername = (address, 40000)
    f.request.headers["proxy-authorization"] = basic(user, password)
    await auth.requestheaders(f)
    assert "proxy-authorization" not in f.request.headers
    response: http.Response | None = f.response
    return response.status_code if response is not None else None


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


# -- per user name ---------------------------------------------------------------------------------------


def test_rotating_client_addresses_buys_no_guesses():
    async def go() -> None:
        auth, checker = make_auth(Clock())
        for i in range(10):
            assert await attempt(auth, "alice", f"guess{i}", f"127.0.0.{i + 2}") == 407
        assert checker.calls == 10
        for i in range(12, 30):  # fresh addresses, even the right password: refused unchecked
            assert await attempt(auth, "alice", "pw", f"127.0.0.{i}") == 407
        assert checker.calls == 10

    run(go())


def test_one_users_failures_do_not_lock_out_another():
    async def go() -> None:
        auth, _checker = make_auth(Clock())
        for i in range(25):  # everyone on 127.0.0.1, as on a shared host
            assert await attempt(auth, "alice", f"typo{i}") == 407
        assert await attempt(auth, "bob", "pw2") is None
        assert await attempt(auth, "alice", "pw") == 407

    run(go())


def test_unknown_user_names_are_locked_like_known_ones():
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=3)
        for user in ("alice", "nobody-here"):
            for _ in range(3):
                assert await attempt(auth, user, "wrong") == 407
            calls = checker.calls
            assert await attempt(auth, user, "wrong") == 407
            assert checker.calls == calls  # locked: not looked at, whether the name exists or not

    run(go())


def test_locked_name_refuses_even_a_verified_credential():
    async def go() -> None:
        auth, _checker = make_auth(Clock(), max_failures=3)
        assert await attempt(auth, "alice", "pw") is None  # now in the verified cache
        for _ in range(3):
            assert await attempt(auth, "alice", "wrong") == 407
        assert await attempt(auth, "alice", "pw") == 407

    run(go())


def test_requests_without_credentials_are_not_counted():
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=2, max_total=2)
        for value in ("", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()) * 5:
            f = tflow.tflow()
            if value:
                f.request.headers["proxy-authorization"] = value
            await auth.requestheaders(f)
            assert f.response is not None and f.response.status_code == 407
        assert checker.calls == 0 and len(auth.limiter) == 0
        assert await attempt(auth, "alice", "pw") is None

    run(go())


def test_failures_age_out_with_the_window():
    async def go() -> None:
        clock = Clock()
        auth, _checker = make_auth(clock, max_failures=3, max_total=5)
        for _ in range(3):
            assert await attempt(auth, "alice", "wrong") == 407
        for i in range(2):
            assert await attempt(auth, f"user{i}", "wrong") == 407
        assert auth.limiter.budget_spent()
        clock.now += 59
        assert await attempt(auth, "alice", "pw") == 407
        clock.now += 2  # 61 s after the failures
        assert not auth.limiter.budget_spent()
        assert await attempt(auth, "alice", "pw") is None
        assert len(auth.limiter) == 0  # names forgotten once their failures aged out

    run(go())


def test_concurrent_guesses_cannot_exceed_the_per_name_limit():
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=3, slow=True)  # checks run in worker threads
        statuses = await asyncio.gather(*(attempt(auth, "alice", f"guess{i}") for i in range(40)))
        assert statuses == [407] * 40
        assert checker.calls == 3

    run(go())


# -- the global budget ------------------------------------------------------------------------------------


def test_global_budget_stops_checks_for_every_unverified_name():
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=10, max_total=20)
        for i in range(20):  # spread thin: no single name is near its own limit
            assert await attempt(auth, f"spray{i}", "Password1", f"127.0.{i}.1") == 407
        assert checker.calls == 20
        assert await attempt(auth, "bob", "pw2") == 407  # right, but never verified: not checked
        assert await attempt(auth, "someone-new", "x") == 407
        assert checker.calls == 20

    run(go())


def test_verified_credentials_survive_a_global_flood():
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=10, max_total=20)
        assert await attempt(auth, "alice", "pw") is None
        for i in range(500):
            assert await attempt(auth, f"flood{i}", "x") == 407
        assert auth.limiter.budget_spent()
        assert checker.calls == 1 + 20
        for _ in range(5):
            assert await attempt(auth, "alice", "pw") is None
        assert checker.calls == 1 + 20

    run(go())


def test_cache_misses_during_a_flood_still_count_against_the_name():
    """While the budget is spent the verified cache is the only judge; guessing it is capped per name."""
    async def go() -> None:
        auth, checker = make_auth(Clock(), max_failures=3, max_total=5)
        assert await attempt(auth, "alice", "pw") is None
        for i in range(5):
            assert await attempt(auth, f"flood{i}", "x") == 407
        calls = checker.calls
        for i in range(3):
            assert await attempt(auth, "alice", f"guess{i}") == 407
        assert await attempt(auth, "alice", "pw") == 407  # the name is locked now, cache or not
        assert checker.calls == calls

    run(go())


# -- bounded memory -----------------------------------------------------------------------------------------


def test_full_name_table_refuses_new_names_unchecked_but_keeps_verified_users():
    async def go() -> None:
        clock = Clock()
        auth, checker = make_auth(clock, max_failures=3, max_total=5, max_tracked=50)
        assert await attempt(auth, "alice", "pw") is None
        for i in range(5):
            assert await attempt(auth, f"flood{i}", "x") == 407
        for i in range(5, 1000):  # cache misses under fresh names fill the table
            assert await attempt(auth, f"flood{i}", "x") == 407
        assert len(auth.limiter) == 50
        calls = checker.calls
        assert await attempt(auth, "alice", "pw") is None  # verified: still passes
        assert await attempt(auth, "bob", "pw2") == 407
        for i in range(3):  # and alice's name is still counted (its room is reserved)
            assert await attempt(auth, "alice", f"guess{i}") == 407
        assert await attempt(auth, "alice", "pw") == 407
        assert checker.calls == calls
        assert len(auth.limiter) == 51
        clock.now += 61
        assert await attempt(auth, "bob", "pw2") is None
        assert len(auth.limiter) == 0

    run(go())


def test_limiter_never_evicts_a_live_name():
    clock = Clock()
    limiter = FailureLimiter(clock, max_failures=2, max_total=1000, max_tracked=10)
    for _ in range(2):
        limiter.record(b"target")
    assert limiter.locked(b"target")
    for i in range(100):
        name = f"filler{i}".encode()
        if not limiter.locked(name):
            limiter.record(name)
    assert len(limiter) == 10
    assert limiter.locked(b"target")  # not pushed out by the fillers
    assert limiter.locked(b"another-new-name")
    assert not limiter.locked(b"another-new-name", reserved=True)
