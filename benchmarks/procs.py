"""The processes a benchmark session runs: the fake Google, plain mitmdump, gcp-auth-proxy.

Each runs as its own process so CPU and memory figures come from /proc for that process only.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import certifi

from tests.proxyproc import base_env as clean_env  # no inherited proxy/CA variables

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0




def free_port() -> int:
    """A port that was free a moment ago (needed where we must know the port before the process logs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    """A child process plus /proc readings of its CPU time and memory."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    port: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        """utime + stime of the process (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_mb(self) -> float:
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        return self._status_kb("VmHWM") / 1024

    def reset_peak_rss(self) -> bool:
        """Reset VmHWM to the current RSS (Linux clear_refs 5); False where not permitted."""
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _spawn(name: str, argv: list[str], env: dict[str, str], log: Path, stdout: int | IO[bytes] | None = None
           ) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    out = log.open("wb")
    popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else out, stderr=out)
    return Proc(name, popen, log)


def start_fake(workdir: Path) -> Proc:
    """``python -m fakegoogle``; its JSON line (addresses, CA paths, keys) lands in ``info``."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = _spawn("fakegoogle", [sys.executable, "-m", "fakegoogle", "--workdir", str(workdir / "fake")],
                  clean_env(), workdir / "fake.log", stdout=subprocess.PIPE)
    assert proc.popen.stdout is not None
    line = proc.popen.stdout.readline()
    if not line:
        raise RuntimeError(f"the fake Google did not start; see {proc.log}")
    proc.info = json.loads(line)
    return proc


def addr(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host, int(port)


def wait_listening(proc: Proc, port: int, timeout: float = START_TIMEOUT) -> None:
    """Poll until ``port`` accepts TCP (mitmdump -q prints nothing we could wait for)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}; see {proc.log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{proc.name} did not listen on {port} within {timeout:.0f} s; see {proc.log}")


def upstream_bundle(fake: Proc, workdir: Path) -> Path:
    """certifi's public roots + the fake Google CA, as mitmproxy's ssl_verify_upstream_trusted_ca."""
    bundle = workdir / "upstream-bundle.pem"
    bundle.write_text(Path(certifi.where()).read_text() + Path(fake.info["google_ca_pem"]).read_text())
    return bundle


def start_mitmdump(fake: Proc, workdir: Path) -> Proc:
    """Plain mitmdump: default addons, ``-q`` (flow_detail=0, termlog errors only), our resolve script."""
    port = free_port()
    confdir = workdir / "mitmdump-conf"
    argv = [
        str(VENV_BIN / "mitmdump"), "-q",
        "--listen-host", "127.0.0.1", "--listen-port", str(port),
        "--set", f"confdir={confdir}",
        "--set", f"ssl_verify_upstream_trusted_ca={upstream_bundle(fake, workdir)}",
        "-s", str(ROOT / "addons" / "resolve.py"),
        "--set", f"resolve=*.googleapis.com={fake.info['googleapis']}",
        "--set", f"resolve=*.example.test={fake.info['other']}",
    ]
    proc = _spawn("mitmdump", argv, clean_env(), workdir / "mitmdump.log")
    wait_listening(proc, port)
    proc.port = port
    proc.info = {"ca": str(confdir / "mitmproxy-ca-cert.pem")}
    return proc


def gap_argv(fake: Proc, workdir: Path, port: int, *extra: str, command: str = "serve",
             python_flags: tuple[str, ...] = (), module: tuple[str, ...] = ("proxy",)) -> list[str]:
    return [
        sys.executable, *python_flags, "-m", *module, command,
        "--listen", f"127.0.0.1:{port}",
        "--confdir", str(workdir / "gap-conf"),
        "--resolve", f"*.googleapis.com={fake.info['googleapis']}",
        "--resolve", f"*.example.test={fake.info['other']}",
        "--upstream-ca", fake.info["google_ca_pem"],
        *extra,
    ]


def gap_env(fake: Proc) -> dict[str, str]:
    return clean_env(GOOGLE_APPLICATION_CREDENTIALS=fake.info["service_account_key"])


def start_gap(fake: Proc, workdir: Path, name: str = "gcp-auth-proxy", *extra: str,
              python_flags: tuple[str, ...] = (), module: tuple[str, ...] = ("proxy",)) -> Proc:
    """``python -m proxy serve`` with token injection and the audit log on."""
    port = free_port()
    argv = gap_argv(fake, workdir, port, "--audit-log", str(workdir / f"{name}-audit.jsonl"), *extra,
                    python_flags=python_flags, module=module)
    proc = _spawn(name, argv, gap_env(fake), workdir / f"{name}.log")
    wait_listening(proc, port)
    proc.port = port
    proc.info = {"ca": str(workdir / "gap-conf" / "mitmproxy-ca-cert.pem")}
    return proc


def fetch_token(fake: Proc) -> str:
    """An access token straight from the fake (refresh_token grant), for the direct client.

    Only a fake token; it is passed to the load generator on stdin, never printed.
    """
    from urllib.parse import urlencode

    user = json.loads(Path(fake.info["authorized_user"]).read_text())
    body = urlencode({"grant_type": "refresh_token", "client_id": user["client_id"],
                      "client_secret": user["client_secret"], "refresh_token": user["refresh_token"]}).encode()
    ctx = ssl.create_default_context(cafile=fake.info["google_ca_pem"])
    with socket.create_connection(addr(fake.info["googleapis"])) as raw, \
            ctx.wrap_socket(raw, server_hostname="oauth2.googleapis.com") as s:
        s.sendall(b"POST /token HTTP/1.1\r\nHost: oauth2.googleapis.com\r\nConnection: close\r\n"
                  b"Content-Type: application/x-www-form-urlencoded\r\n"
                  + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return str(json.loads(data.partition(b"\r\n\r\n")[2])["access_token"])


def fake_stats(fake: Proc) -> dict[str, int]:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{fake.info['admin_url']}/stats", timeout=10) as r:
        return dict(json.loads(r.read()))
