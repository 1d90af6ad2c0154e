"""`run -- CMD`: exit statuses, signals, the proxy's lifetime, nesting, and our own environment."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from fakegoogle import FakeGoogle
from proxy import cli, wrap
from tests.proxyproc import ROOT, proxy_args
from tests.wraphelp import run_command, run_wrapped, wrapped_env

CHILD_WAITS_FOR_SIGNAL = """
import signal, sys
def stop(sig, frame):
    print("child got", signal.Signals(sig).name, flush=True)
    sys.exit(5)
signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    signal.pause()
"""


def port_is_closed(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=5):
            return False
    except ConnectionRefusedError:
        return True


def test_exit_status_is_the_childs(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["sh", "-c", "exit 7"])
    assert out.returncode == 7, out.stderr


def test_child_output_is_untouched(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["sh", "-c", "printf 'out\\n'; printf 'err\\n' >&2"])
    assert out.returncode == 0
    assert out.stdout == "out\n"
    assert out.stderr == "err\n"  # the proxy is quiet when all is well


def test_child_killed_by_sigterm_gives_143_and_port_closes(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["sh", "-c", 'echo "$HTTPS_PROXY"; kill -TERM $$'])
    assert out.returncode == 143, out.stderr
    url = out.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    assert port_is_closed(url)


def test_port_closed_after_normal_exit(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["sh", "-c", 'echo "$HTTPS_PROXY"'])
    assert out.returncode == 0, out.stderr
    assert port_is_closed(out.stdout.strip())


def test_proxy_accepts_connections_when_child_starts(fake: FakeGoogle, tmp_path: Path) -> None:
    code = "import os, socket, urllib.parse as u; p = u.urlsplit(os.environ['HTTPS_PROXY']); " \
           "socket.create_connection((p.hostname, p.port), timeout=5).close()"
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_run_reaches_child(fake: FakeGoogle, tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*run_command(fake, tmp_path), "--", sys.executable, "-c", CHILD_WAITS_FOR_SIGNAL],
        env=wrapped_env(fake, tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGHUP:  # the child has no handler for it: it dies of it
        assert proc.returncode == 128 + signal.SIGHUP, err
    else:
        assert rest == f"child got {sig.name}\n"
        assert proc.returncode == 5, err


def test_command_not_found_is_127_with_one_sentence(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["/nonexistent/tool"])
    assert out.returncode == 127
    assert out.stderr.strip() == "gcp-auth-proxy: cannot run /nonexistent/tool: command not found"


def test_missing_command_is_a_usage_error(fake: FakeGoogle, tmp_path: Path) -> None:
    out = subprocess.run(  # noqa: PLW1510 - callers check the status
        run_command(fake, tmp_path), env=wrapped_env(fake, tmp_path), cwd=ROOT,
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 64
    assert "run needs a command" in out.stderr
    assert "Traceback" not in out.stderr


def test_nested_run_reuses_the_outer_proxy(fake: FakeGoogle, tmp_path: Path) -> None:
    inner = f"{sys.executable} -m proxy run -- sh -c 'echo \"$HTTPS_PROXY\"'; echo \"$HTTPS_PROXY\""
    out = run_wrapped(fake, tmp_path, ["sh", "-c", inner])
    assert out.returncode == 0, out.stderr
    inner_url, outer_url = out.stdout.split()
    assert inner_url == outer_url


def test_nested_run_with_proxy_options_is_refused(fake: FakeGoogle, tmp_path: Path) -> None:
    inner = f"{sys.executable} -m proxy run --inject-host x.example -- true"
    out = run_wrapped(fake, tmp_path, ["sh", "-c", inner])
    assert out.returncode == 77
    assert "already running under gcp-auth-proxy" in out.stderr


def test_in_process_run_leaves_our_environment_alone(fake: FakeGoogle, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.write_service_account_key(tmp_path / "k.json")))
    monkeypatch.setenv("NO_GCE_CHECK", "true")
    before = dict(os.environ)
    check = "import os, sys; sys.exit(3 if os.environ.get('GCP_AUTH_PROXY_RUN') else 1)"
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        code = cli.main(["run", *proxy_args(fake, tmp_path / "confdir"), "--", sys.executable, "-c", check])
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)
    assert code == 3
    assert dict(os.environ) == before
    assert wrap.MARKER not in os.environ
