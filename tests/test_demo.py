"""The README's first command: `gcp-auth-proxy demo`, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.proxyproc import ROOT, base_env

TOKEN_SHAPED = re.compile(r"ya29\.[A-Za-z0-9_\-]{8,}|gcp-auth-proxy-placeholder\.[A-Za-z0-9_\-]{8,}")


def test_demo_succeeds_and_prints_no_token() -> None:
    out = subprocess.run(  # noqa: PLW1510 - callers check the status
        [sys.executable, "-m", "proxy", "demo"], env=base_env(), cwd=ROOT,
        capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "real token injected (sha256:" in text
    assert "the child held a placeholder (gcp-auth-proxy-placeholder.*, sha256:" in text
    assert "no placeholder reached it" in text
    assert not TOKEN_SHAPED.search(text), TOKEN_SHAPED.search(text)
