"""TokenCache against a fake credential and a fake clock: lifetimes, single-flight, backoff."""

import datetime
import gc
import threading
import weakref
from types import TracebackType

import pytest
from google.auth import exceptions as gexc

from addons.token_cache import TokenCache, TokenError, describe_error


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class FakeCredentials:
    """The narrow interface TokenCache uses: refresh(), token, expiry, apply()."""

    def __init__(self, clock: FakeClock, lifetime: float = 3600, quota_project: str | None = None) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.quota_project = quota_project
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None
        self.refreshes = 0
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def refresh(self, request) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        if self.fail_with is not None:
            raise type(self.fail_with)(*self.fail_with.args)  # a new one each time, as google-auth does
        self.refreshes += 1
        self.token = f"ya29.fake-{self.refreshes}"
        expiry = datetime.datetime.fromtimestamp(self.clock() + self.lifetime, datetime.UTC)
        self.expiry = expiry.replace(tzinfo=None)  # google-auth's expiry is naive UTC

    def apply(self, headers, token=None) -> None:
        headers["authorization"] = f"Bearer {self.token}"
        if self.quota_project:
            headers["x-goog-user-project"] = self.quota_project


def make_cache(creds: FakeCredentials, clock: FakeClock, **kw) -> TokenCache:
    return TokenCache(lambda: creds, request=None, clock=clock, sleep=clock.sleep, jitter=lambda: 1.0, **kw)


def test_token_is_fetched_once_and_reused():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    cache = make_cache(creds, clock)
    first = cache.get()
    clock.now += 60
    assert cache.get() is first
    assert creds.refreshes == 1


def test_headers_come_from_apply_including_quota_project():
    clock = FakeClock()
    cache = make_cache(FakeCredentials(clock, quota_project="billing-proj"), clock)
    headers = cache.get().headers
    assert headers == {"authorization": "Bearer ya29.fake-1", "x-goog-user-project": "billing-proj"}


def test_refresh_is_due_five_minutes_before_expiry_for_long_tokens():
    clock = FakeClock()
    cache = make_cache(FakeCredentials(clock, lifetime=3600), clock)
    token = cache.get()
    assert token.refresh_at == pytest.approx(token.expires_at - 300)
    clock.now = token.refresh_at - 1
    assert not cache.refresh_due()
    clock.now = token.refresh_at + 1
    assert cache.refresh_due() and cache.current() is token  # still served while refreshing


def test_short_lived_token_is_not_stale_right_after_fetch():
    clock = FakeClock()
    cache = make_cache(FakeCredentials(clock, lifetime=60), clock)
    token = cache.get()
    assert not cache.refresh_due()
    assert token.refresh_at == pytest.approx(token.fetched_at + 30)


def test_expired_token_is_not_served():
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime=100)
    cache = make_cache(creds, clock)
    cache.get()
    clock.now += 95  # inside the expiry skew
    assert cache.current() is None
    assert cache.get().value == "ya29.fake-2"


def test_concurrent_cold_start_fetches_once():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    creds.gate = threading.Event()
    cache = make_cache(creds, clock)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get().value)) for _ in range(50)]
    for t in threads:
        t.start()
    assert creds.entered.wait(5)
    creds.gate.set()
    for t in threads:
        t.join(5)
    assert results == ["ya29.fake-1"] * 50
    assert creds.refreshes == 1


def test_failure_backs_off_and_recovers():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    creds.fail_with = gexc.TransportError("connection refused")
    cache = make_cache(creds, clock, backoff_base=1.0, min_fetch_interval=0.0)
    with pytest.raises(TokenError) as first:
        cache.get()
    assert "could not be reached" in str(first.value)
    calls = len(clock.slept)
    with pytest.raises(TokenError):  # inside the backoff window: no new attempt
        cache.get()
    assert cache.in_backoff() and cache.fetch_failures == 1 and len(clock.slept) == calls
    creds.fail_with = None
    clock.now += 1.01
    assert cache.get().value == "ya29.fake-1"
    assert cache.last_error is None


def test_backoff_grows_exponentially_with_a_ceiling():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    creds.fail_with = gexc.RefreshError("500 internal")
    cache = make_cache(creds, clock, backoff_base=1.0, backoff_max=8.0, min_fetch_interval=0.0)
    waits = []
    for _ in range(6):
        with pytest.raises(TokenError):
            cache.get()
        waits.append(cache._retry_at - clock.now)
        clock.now = cache._retry_at
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_still_valid_token_is_served_while_refresh_fails():
    clock = FakeClock()
    creds = FakeCredentials(clock, lifetime=600)
    cache = make_cache(creds, clock)
    token = cache.get()
    clock.now = token.refresh_at + 1
    creds.fail_with = gexc.TransportError("down")
    assert cache.refresh() is token
    assert cache.last_error is not None


def test_invalidate_forces_one_new_fetch_and_ignores_stale_values():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    cache = make_cache(creds, clock)
    old = cache.get()
    cache.invalidate("ya29.not-ours")
    assert cache.get() is old
    cache.invalidate(old.value)
    assert cache.get().value == "ya29.fake-2"


def test_fetch_rate_has_a_ceiling():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    cache = make_cache(creds, clock, min_fetch_interval=1.0)
    first = cache.get()
    cache.invalidate(first.value)
    cache.get()
    assert clock.slept == [pytest.approx(1.0)]


def test_missing_credentials_are_looked_up_again_later():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    found = {"yes": False}

    def load():
        if not found["yes"]:
            raise gexc.DefaultCredentialsError("Your default credentials were not found.")
        return creds

    cache = TokenCache(load, None, clock=clock, sleep=clock.sleep, jitter=lambda: 1.0, min_fetch_interval=0)
    with pytest.raises(TokenError) as info:
        cache.get()
    assert info.value.reason == "no_credentials"
    found["yes"] = True
    clock.now += 1
    assert cache.get().value == "ya29.fake-1"


def test_token_repr_and_errors_never_show_the_token():
    clock = FakeClock()
    cache = make_cache(FakeCredentials(clock), clock)
    token = cache.get()
    assert token.value not in repr(token)
    err = describe_error(gexc.RefreshError(f"bad response with {token.value} and Bearer {token.value}"))
    assert token.value not in str(err)


@pytest.mark.parametrize(
    "error, reason",
    [
        (gexc.DefaultCredentialsError("Your default credentials were not found."), "no_credentials"),
        (gexc.DefaultCredentialsError("File /x.json was not found."), "credentials_file_missing"),
        (gexc.DefaultCredentialsError("File /x.json is not a valid json file."), "credentials_file_invalid"),
        (PermissionError(13, "Permission denied"), "credentials_file_unreadable"),
        (gexc.RefreshError("invalid_grant: Invalid JWT Signature."), "invalid_grant"),
        (gexc.RefreshError("Failed to retrieve http://metadata/...: 500"), "metadata_failed"),
        (gexc.TransportError("Failed to retrieve http://169.254.169.254/ from the Google Compute Engine metadata service"), "metadata_unreachable"),
        (gexc.TransportError("HTTPSConnectionPool: connection refused"), "token_endpoint_unreachable"),
    ],
)
def test_errors_are_classified_into_actionable_reasons(error, reason):
    assert describe_error(error).reason == reason


class _Local:
    """Something a request handler holds while it asks for a token (a flow, in the addon)."""


def _depth(tb: TracebackType | None) -> int:
    depth = 0
    while tb is not None:
        depth += 1
        tb = tb.tb_next
    return depth


def _get_from_handler(cache: TokenCache, held: list[weakref.ref[_Local]]) -> None:
    local = _Local()
    held.append(weakref.ref(local))
    cache.get()


def _raise_failure_from_handler(cache: TokenCache, held: list[weakref.ref[_Local]]) -> None:
    local = _Local()
    held.append(weakref.ref(local))
    if cache.in_backoff():  # what the addon does before it waits for a refresh
        raise cache.failure()


@pytest.mark.parametrize("handler", [_get_from_handler, _raise_failure_from_handler])
def test_repeated_failures_do_not_grow_tracebacks_or_keep_callers_alive(handler):
    clock = FakeClock()
    creds = FakeCredentials(clock)
    creds.fail_with = gexc.TransportError("connection refused")
    cache = make_cache(creds, clock, backoff_base=60.0, min_fetch_interval=0.0)
    with pytest.raises(TokenError) as first:
        cache.get()  # the one real fetch; the clock stands still, so the rest are in backoff
    expected = (str(first.value), first.value.reason, first.value.cause_type)
    del first
    held: list[weakref.ref[_Local]] = []
    depths = []
    for _ in range(1000):
        try:
            handler(cache, held)
        except TokenError as e:
            assert (str(e), e.reason, e.cause_type) == expected
            depths.append(_depth(e.__traceback__))
    assert len(depths) == 1000 and set(depths) == {depths[0]}
    assert creds.refreshes == 0 and cache.fetch_failures == 1
    gc.collect()
    assert [ref for ref in held if ref() is not None] == []


def test_failure_is_a_new_error_each_time_and_last_error_follows_it():
    clock = FakeClock()
    creds = FakeCredentials(clock)
    creds.fail_with = gexc.RefreshError("invalid_grant: Invalid JWT Signature.")
    cache = make_cache(creds, clock, min_fetch_interval=0.0)
    assert cache.last_error is None
    with pytest.raises(TokenError) as info:
        cache.get()
    one, two = cache.failure(), cache.failure()
    assert one is not two and one is not info.value and cache.last_error is not cache.last_error
    for err in (one, two, cache.last_error):
        assert (str(err), err.reason) == (str(info.value), "invalid_grant")
        assert (err.cause_type, err.cause_message) == ("RefreshError", "invalid_grant: Invalid JWT Signature.")
        assert err.__traceback__ is None and err.__context__ is None
    creds.fail_with = None
    clock.now = cache._retry_at
    cache.get()
    assert cache.last_error is None
    assert cache.failure().reason == "token_unavailable"  # a concurrent success cleared it: still raisable
