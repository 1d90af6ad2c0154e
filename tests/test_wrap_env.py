"""`gcp-auth-proxy env`: point a whole shell at a running `serve`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from proxy import cli, wrap
from tests.proxyproc import ProxyProcess, base_env


def test_env_prints_exports_for_the_listen_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["env", "--listen", "127.0.0.1:8181", "--confdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "export HTTPS_PROXY=http://127.0.0.1:8181" in lines
    assert f"export {wrap.MARKER}=http://127.0.0.1:8181" in lines
    assert f"export REQUESTS_CA_BUNDLE={tmp_path}/client-trust.pem" in lines
    assert f"export NODE_EXTRA_CA_CERTS={tmp_path}/mitmproxy-ca-cert.pem" in lines
    assert not any("GCE_METADATA" in line for line in lines)  # `serve` has no placeholder endpoint
    boto = (tmp_path / "env-boto.cfg").read_text()
    assert "proxy_port = 8181" in boto


def test_env_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "corp.internal")
    monkeypatch.setenv("GCP_AUTH_PROXY_LISTEN", "127.0.0.1:8282")
    assert cli.main(["env", "--format", "json", "--confdir", str(tmp_path)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["set"]["https_proxy"] == "http://127.0.0.1:8282"
    assert data["set"]["NO_PROXY"] == "corp.internal,localhost,127.0.0.1,::1"


def test_eval_env_in_a_shell_reaches_google_through_serve(proxy: ProxyProcess, fake: FakeGoogle) -> None:
    script = (f"eval \"$(python -m proxy env --listen 127.0.0.1:{proxy.port} --confdir {proxy.confdir})\" && "
              "curl -sS --fail-with-body https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media")
    env = base_env()
    env["PATH"] = f"{Path(__import__('sys').executable).parent}:{env['PATH']}"
    out = subprocess.run(  # noqa: PLW1510 - callers check the status
        ["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from fake Google\n"
