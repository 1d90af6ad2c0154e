"""Starting the real proxy as a process on loopback, and clean client environments for tests.

Most tests run the proxy in-process instead (tests/inprocess.py): same program, no interpreter
start-up. Both kinds share ``RunningProxy``, what tests read of a proxy.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
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
# What base_env() sets for google-auth, besides the credentials.
GOOGLE_AUTH_ENV = {
    "NO_GCE_CHECK": "true",  # google-auth must not probe 169.254.169.254 (no metadata server here)
    "GCE_METADATA_IP": "127.0.0.1:9",  # and if it does, it fails fast
    "GCE_METADATA_HOST": "127.0.0.1:9",
}
ALL_OUTPUTS: list[Path] = []  # every proxy's output (process or in-process), for the session-wide token check


def base_env(**extra: str) -> dict[str, str]:
    """A minimal, explicit environment: nothing inherited that could hide a CA or proxy mistake."""
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_VARIABLES and not k.startswith("GCP_AUTH_PROXY_")}
    env.update(GOOGLE_AUTH_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class RunningProxy:
    """A started proxy as tests see it: its address, its CA, and its output, line by line."""

    def __init__(self, host: str, port: int, confdir: Path, output: Path) -> None:
        self.host = host
        self.port = port
        self.confdir = confdir
        self.output = output
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.closed = False  # no more output will come

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

    def _add_line(self, line: str) -> None:
        with self.changed:
            self.lines.append(line)
            self.changed.notify_all()

    def _close_output(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()


class ProxyProcess(RunningProxy):
    """``python -m proxy ...`` in its own process: for signals, exit codes, the CLI, env handling."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, confdir: Path, output: Path) -> None:
        super().__init__(host, port, confdir, output)
        self.proc = proc
        self._reader: threading.Thread | None = None

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
        "--resolve", "pubsub.googleapis.com={}:{}".format(*fake.pubsub_addr),  # gRPC; the exact name wins
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
            pp._add_line(raw.decode(errors="replace"))
        out.close()
        pp._close_output()

    pp._reader = threading.Thread(target=pump, daemon=True)
    pp._reader.start()
    if expect_listen:
        line = pp.wait_for_line("listening on", START_TIMEOUT)
        match = _LISTENING.search(line)
        assert match, line
        pp.port = int(match.group(2))
    return pp
