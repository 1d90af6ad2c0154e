"""Every recipe in examples/ runs against the fake Google, so none of them can rot."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from proxy import cli, settings
from tests.proxyproc import ALL_OUTPUTS, ROOT, ProxyProcess, base_env
from tests.wraphelp import run_wrapped, wrapped_env

EXAMPLES = ROOT / "examples"
HELLO = "hello from fake Google\n"


def run_example(argv: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(  # noqa: PLW1510 - callers check the status
        argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    log = tmp_path / f"example-{len(ALL_OUTPUTS)}.log"
    log.write_text(out.stdout + out.stderr)
    ALL_OUTPUTS.append(log)
    return out


def run_env(fake: FakeGoogle, tmp_path: Path, **extra: str) -> dict[str, str]:
    """`run` configured through its GCP_AUTH_PROXY_* variables, so the recipes stay one line."""
    env = wrapped_env(fake, tmp_path, **extra)
    env["PATH"] = f"{Path(sys.executable).parent}{':'}{env['PATH']}"
    env["GCP_AUTH_PROXY_RESOLVE"] = (f"*.googleapis.com={fake.googleapis_addr[0]}:{fake.googleapis_addr[1]},"
                                     f"*.example.test={fake.other_addr[0]}:{fake.other_addr[1]}")
    env["GCP_AUTH_PROXY_UPSTREAM_CA"] = str(fake.google_ca_pem)
    env["GCP_AUTH_PROXY_CONFDIR"] = str(tmp_path / "confdir")
    return env


def test_curl_example(proxy: ProxyProcess, tmp_path: Path) -> None:
    env = base_env(PROXY=proxy.url, CA=str(proxy.ca_cert))
    out = run_example([str(EXAMPLES / "curl.sh")], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO


def test_storage_anonymous_example(proxy: ProxyProcess, tmp_path: Path) -> None:
    env = base_env(HTTPS_PROXY=proxy.url, REQUESTS_CA_BUNDLE=str(proxy.ca_cert))
    out = run_example([sys.executable, str(EXAMPLES / "storage_anonymous.py")], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO


def test_storage_default_example_under_run(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, [sys.executable, str(EXAMPLES / "storage_default.py")])
    assert out.returncode == 0, out.stderr
    assert "hello.txt" in out.stdout.split()


def test_gsutil_example(fake: FakeGoogle, tmp_path: Path) -> None:
    if shutil.which("gsutil") is None:
        pytest.skip("gsutil is not installed on this machine")
    (tmp_path / "gcloud").mkdir()
    env = run_env(fake, tmp_path, CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    out = run_example([str(EXAMPLES / "gsutil.sh")], env, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "gs://demo-bucket/hello.txt\n"


def test_rclone_example(fake: FakeGoogle, tmp_path: Path) -> None:
    if shutil.which("rclone") is None:
        pytest.skip("rclone is not installed on this machine")
    out = run_example([str(EXAMPLES / "rclone.sh")], run_env(fake, tmp_path, RCLONE_CONFIG="/dev/null"), tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello.txt\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mitmdump_example(fake: FakeGoogle, tmp_path: Path) -> None:
    from proxy import trust

    bundle = trust.upstream_bundle(tmp_path / "confdir", fake.google_ca_pem)
    port = _free_port()
    env = wrapped_env(fake, tmp_path, PORT=str(port))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    g_host, g_port = fake.googleapis_addr
    log = tmp_path / "mitmdump.log"
    ALL_OUTPUTS.append(log)
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(EXAMPLES / "mitmdump.sh"), "--set", f"confdir={tmp_path / 'mitm'}",
             "--set", f"resolve=*.googleapis.com={g_host}:{g_port}",
             "--set", f"ssl_verify_upstream_trusted_ca={bundle}", "--quiet"],
            env=env, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
        )
        try:
            ca = tmp_path / "mitm" / "mitmproxy-ca-cert.pem"
            # curl retries until mitmdump listens: a condition, not a sleep.
            out = run_example(
                ["curl", "-sS", "--fail-with-body", "--retry", "30", "--retry-connrefused", "--retry-delay", "1",
                 "-x", f"http://127.0.0.1:{port}", "--cacert", str(ca),
                 "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media"],
                base_env(), tmp_path,
            ) if _wait_for_file(ca, proc) else None
        finally:
            proc.terminate()
            proc.wait(15)
    assert out is not None, log.read_text()
    assert out.returncode == 0, out.stderr + log.read_text()
    assert out.stdout == HELLO
    api = [r for r in fake.requests if r.server == "googleapis"]
    assert api and all(r.token_valid for r in api)


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """mitmdump writes its CA before it listens; poll the file (no other signal is available)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists():
            return True
        time.sleep(0.1)
    return path.exists()


def test_systemd_unit_runs_a_valid_serve_command(tmp_path: Path) -> None:
    unit = (EXAMPLES / "gcp-auth-proxy.service").read_text()
    exec_start = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.replace("%h", str(tmp_path)))
    assert Path(argv[0]).name == "gcp-auth-proxy"
    args = cli.build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    parsed = settings.from_sources(vars(args), environ={})
    assert parsed.listen == "127.0.0.1:8080"


# -- examples/policy.toml ----------------------------------------------------------------------------

def test_policy_example_passes_policy_check() -> None:
    out = subprocess.run([sys.executable, "-m", "proxy", "policy", "check", "--config", str(EXAMPLES / "policy.toml")],
                         cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "warning" not in out.stdout.lower(), out.stdout
    for name in ("google-apis", "report-service", "no-deletes", "read-logs", "write-reports", "pypi"):
        assert name in out.stdout
    decisions = {}
    for url in ("https://pypi.org/simple/", "https://pypi.org:22/"):  # HTTPS to the index, and only that
        explained = subprocess.run([sys.executable, "-m", "proxy", "policy", "explain", "--json", "--config",
                                    str(EXAMPLES / "policy.toml"), "GET", url], cwd=ROOT, env=base_env(),
                                   capture_output=True, text=True, timeout=60, check=False)
        assert explained.returncode == 0, explained.stderr
        decisions[url] = json.loads(explained.stdout)["decision"]
    assert decisions["https://pypi.org/simple/"]["action"] == "allow"
    assert decisions["https://pypi.org:22/"]["action"] == "deny"


def test_policy_example_allows_the_job_and_nothing_else(proxy_factory, fake: FakeGoogle, tmp_path: Path) -> None:
    from tests.test_proxy_e2e import session_via

    storage = fake._state.storage  # buckets the job reads and writes, made behind the proxy's back
    storage.create_bucket("logs-2026", "fake-project")
    storage.put_bytes("logs-2026", "app/01.log", b"log line\n", "text/plain")
    storage.create_bucket("reports", "fake-project")
    proxy = proxy_factory("--config", str(EXAMPLES / "policy.toml"),
                          "--resolve", "*.a.run.app={}:{}".format(*fake.run_addr))
    session = session_via(proxy)
    api = "https://storage.googleapis.com/storage/v1/b"
    assert session.get(f"{api}/logs-2026/o/app%2F01.log?alt=media", timeout=20).text == "log line\n"
    assert session.get(f"{api}/logs-2026/o", timeout=20).status_code == 200
    upload = session.post("https://storage.googleapis.com/upload/storage/v1/b/reports/o?uploadType=media"
                          "&name=daily/2026-11-28.txt", data=b"report", timeout=20)
    assert upload.status_code == 200, upload.text
    run = session.get("https://report-abc123.a.run.app/", timeout=20)
    assert run.status_code == 200 and run.json()["aud"] == "https://report-abc123.a.run.app"
    refused = {
        "delete": session.delete(f"{api}/logs-2026/o/app%2F01.log", timeout=20),
        "other bucket": session.get(f"{api}/demo-bucket/o/hello.txt?alt=media", timeout=20),
        "report elsewhere": session.post("https://storage.googleapis.com/upload/storage/v1/b/reports/o"
                                         "?uploadType=media&name=other.txt", data=b"x", timeout=20),
    }
    assert {k: r.status_code for k, r in refused.items()} == dict.fromkeys(refused, 403)
    assert "no-deletes" in refused["delete"].json()["error"]["message"]
    assert storage.get("logs-2026", "app/01.log") is not None
