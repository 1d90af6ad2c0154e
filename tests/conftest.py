"""Shared fixtures: the fake Google, real proxies (in this process, or as processes), clean environments."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from fakegoogle.testing import route_urllib3_to
from proxy import logs
from tests.inprocess import InProcessProxy, start_in_process
from tests.proxyproc import (
    ALL_OUTPUTS,
    CLEARED_VARIABLES,
    GOOGLE_AUTH_ENV,
    ProxyProcess,
    RunningProxy,
    base_env,
    proxy_args,
    start_proxy,
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """These machines export CA and proxy variables globally; tests start from none of them."""
    for name in CLEARED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("GCP_AUTH_PROXY_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A CLI run in this process (``cli.main``) installs the program's log handler on the root
    logger, writing to the stderr pytest had captured for that test; later tests' background
    threads would log into that closed stream. Take it away again, and the levels it set."""
    names = ("addons", "proxy", "mitmproxy")
    levels = {name: logging.getLogger(name).level for name in ("", *names)}
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == logs.HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def fake_google(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    fake = FakeGoogle(tmp_path_factory.mktemp("fakegoogle"))
    fake.start()
    yield fake
    fake.stop()
    # Session-wide checks: no token reached a non-Google origin, in any header or URL ...
    assert not fake.leaks, f"a non-Google origin received an issued token in: {sorted(set(fake.leaks))}"
    # ... and no token the fake ever issued appears in any proxy's output.
    tokens = [t for t in (*fake.issued_tokens, *fake.issued_id_tokens) if t]  # ID tokens are secrets too
    for output in ALL_OUTPUTS:
        text = output.read_text(errors="replace") if output.exists() else ""
        leaked = [t[:12] for t in tokens if t in text]
        assert not leaked, f"token(s) starting {leaked} appeared in {output}"


@pytest.fixture(scope="module")
def fg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    """A fake Google of the test module's own, with urllib3 routed to it (no proxy): for tests of
    the fake itself and of client libraries against it."""
    with FakeGoogle(tmp_path_factory.mktemp("fakegoogle")) as fake, route_urllib3_to(fake):
        yield fake


@pytest.fixture
def fake(fake_google: FakeGoogle) -> Iterator[FakeGoogle]:
    """The session's fake Google, reset to normal behaviour for each test."""
    fake_google.set_token_failure(None)
    fake_google.token_lifetime = 3600
    fake_google.clear_requests()
    fake_google.reset_storage()
    fake_google.reset_iam()
    yield fake_google
    fake_google.set_token_failure(None)


@pytest.fixture
def sa_key(fake: FakeGoogle, tmp_path: Path) -> Path:
    return fake.write_service_account_key(tmp_path / "sa.json")


ProxyFactory = Callable[..., RunningProxy]


@pytest.fixture
def proxy_factory(fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ProxyFactory]:
    """Start real proxies in this process: ``proxy_factory(*extra_args, credentials="sa"|path)``.

    The proxy is ``serve`` minus the process: the same argument parsing, settings and
    ``proxy.embed.run_proxy``. One at a time (see tests/inprocess.py). For signals, exit codes,
    the CLI's own output, start-up failures and environment handling, use ``proxy_process_factory``.
    """
    started: list[InProcessProxy] = []
    counter = iter(range(1000))

    def start(*extra: str, credentials: Path | str | None = "sa") -> InProcessProxy:
        if credentials is None:  # no ADC file: google-auth would probe GCE with settings read at import
            raise TypeError("proxy_factory needs a credentials file; use proxy_process_factory(credentials=None)")
        n = next(counter)
        confdir = tmp_path / "confdir"
        # google.auth.default() reads the process environment: set it as base_env() does for a process.
        for name, value in GOOGLE_AUTH_ENV.items():
            monkeypatch.setenv(name, value)
        if credentials == "sa":
            credentials = fake.write_service_account_key(tmp_path / f"sa{n}.json")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(credentials))
        pp = start_in_process(proxy_args(fake, confdir, *extra), confdir=confdir, output=tmp_path / f"proxy{n}.log")
        started.append(pp)
        return pp

    yield start
    for pp in started:
        pp.stop()


@pytest.fixture
def proxy_process_factory(fake: FakeGoogle, tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """Start real proxy processes: ``proxy_process_factory(*extra_args, env={...}, credentials=path|None)``."""
    started: list[ProxyProcess] = []
    counter = iter(range(1000))

    def start(*extra: str, env: dict[str, str] | None = None, credentials: Path | None | str = "sa",
              command: str = "serve", expect_listen: bool = True) -> ProxyProcess:
        n = next(counter)
        confdir = tmp_path / "confdir"
        penv = base_env(**(env or {}))
        if credentials == "sa":
            penv["GOOGLE_APPLICATION_CREDENTIALS"] = str(fake.write_service_account_key(tmp_path / f"psa{n}.json"))
        elif credentials is not None:
            penv["GOOGLE_APPLICATION_CREDENTIALS"] = str(credentials)
        pp = start_proxy([command, *proxy_args(fake, confdir, *extra)], env=penv, confdir=confdir,
                         output=tmp_path / f"process{n}.log", expect_listen=expect_listen)
        started.append(pp)
        return pp

    yield start
    for pp in started:
        pp.stop()


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> RunningProxy:
    """A proxy (in this process) with a service-account key from the fake Google, already holding a token."""
    pp = proxy_factory()
    pp.wait_for_line("token available")
    return pp


@pytest.fixture
def proxy_process(proxy_process_factory: Callable[..., ProxyProcess]) -> ProxyProcess:
    """The same as ``proxy``, as its own process (for signals and the process itself)."""
    pp = proxy_process_factory()
    pp.wait_for_line("token available")
    return pp
