"""Helpers for tests of `gcp-auth-proxy run`: the real CLI in a subprocess against the fake Google."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fakegoogle import FakeGoogle
from tests.proxyproc import ALL_OUTPUTS, ROOT, base_env, proxy_args

RUN_TIMEOUT = 120


def run_command(fake: FakeGoogle, tmp_path: Path, *extra: str) -> list[str]:
    """``python -m proxy run <fake options> EXTRA...`` (EXTRA holds further options, then ``--``)."""
    return [sys.executable, "-m", "proxy", "run", *proxy_args(fake, tmp_path / "confdir"), *extra]


def wrapped_env(fake: FakeGoogle, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean environment whose proxy has the fake's service-account key."""
    env = base_env(**extra)
    env.setdefault("GOOGLE_APPLICATION_CREDENTIALS", str(fake.write_service_account_key(tmp_path / "sa.json")))
    return env


def run_wrapped(
    fake: FakeGoogle, tmp_path: Path, cmd: list[str], *options: str, env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` under `run` and return what happened; stdout/stderr are kept for the token check."""
    out = subprocess.run(  # noqa: PLW1510 - callers check the status
        [*run_command(fake, tmp_path, *options), "--", *cmd],
        env=env if env is not None else wrapped_env(fake, tmp_path), cwd=ROOT, capture_output=True,
        text=True, timeout=timeout,
    )
    log = tmp_path / f"run-{len(ALL_OUTPUTS)}.log"
    log.write_text(out.stdout + "\n" + out.stderr)
    ALL_OUTPUTS.append(log)  # the session-wide check fails if any issued token appears here
    return out
