"""Starting the real proxy as a process on loopback, and clean client environments for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fakegoogle import FakeGoogle

ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (127\.0\.0\.1|\[?::1\]?):(\d+)")
START_TIMEOUT = 30.0

# Variables these machines export globally; they hide CA mistakes, so clients get none of them
# unless a test sets them on purpose.
CLEARED_VARIABLES = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
    "NO_PROXY", "no_proxy", "grpc_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "HTTPLIB2_CA_CERTS",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST",
    "GCE_METADATA_IP", "GCE_METADATA_ROOT", "CLOUDSDK_CONFIG", "BOTO_CONFIG", "BOTO_PATH",
    "PIP_CERT", "AWS_CA_BUNDLE", "GIT_SSL_CAINFO", "NIX_SSL_CERT_FILE",
)
ALL_OUTPUTS: list[Path] = []  # every proxy's stdout/stderr, for the session-wide token check


def base_env(**extra: str) -> dict[str, str]:
    """A minimal, explicit environment: nothing inherited that could hide a CA or proxy mistake."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES and not k.startswith("GCP_AUTH_PROXY_")}
    env["NO_GCE_CHECK"] = "true"  # google-auth must not probe 169.254.169.254 (no metadata server here)
    env["GCE_METADATA_IP"] = "127.0.0.1:9"  # and if it does, it fails fast
    env["GCE_METADATA_HOST"] = "127.0.0.1:9"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    confdir: Path
    output: Path
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    closed: bool = False
    _reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_line(self, needle: str, timeout: float = 15.0) -> str:
        """Block until the proxy writes a line containing ``needle`` (a condition, not a sleep)."""
        def found() -> str | None:
            hit = next((line for line in self.lines if needle in line), None)
            return hit if hit is not None or self.closed else None

        with self.changed:
            hit = self.changed.wait_for(found, timeout)
        if not hit:
            raise AssertionError(f"proxy never logged {needle!r}; output:\n{self.text()}")
        return hit

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader:
            self._reader.join(5)
        return code


def proxy_args(fake: FakeGoogle, confdir: Path, *extra: str) -> list[str]:
    g_host, g_port = fake.googleapis_addr
    o_host, o_port = fake.other_addr
    return [
        "--listen", "127.0.0.1:0",
        "--confdir", str(confdir),
        "--resolve", f"*.googleapis.com={g_host}:{g_port}",
        "--resolve", f"*.example.test={o_host}:{o_port}",
        "--upstream-ca", str(fake.google_ca_pem),
        *extra,
    ]


def start_proxy(
    command: Sequence[str],
    *,
    env: dict[str, str],
    confdir: Path,
    output: Path,
    expect_listen: bool = True,
) -> ProxyProcess:
    """Start ``python -m proxy COMMAND...``; returns once it logged its listen address."""
    out = output.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy", *command],
        env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    ALL_OUTPUTS.append(output)
    pp = ProxyProcess(proc, "127.0.0.1", 0, confdir, output)

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.write(raw)
            out.flush()
            with pp.changed:
                pp.lines.append(raw.decode(errors="replace"))
                pp.changed.notify_all()
        out.close()
        with pp.changed:
            pp.closed = True
            pp.changed.notify_all()

    pp._reader = threading.Thread(target=pump, daemon=True)
    pp._reader.start()
    if expect_listen:
        line = pp.wait_for_line("listening on", START_TIMEOUT)
        match = _LISTENING.search(line)
        assert match, line
        pp.port = int(match.group(2))
    return pp
