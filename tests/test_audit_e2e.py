"""The audit log through the real proxy process, with real clients (google-cloud-*, requests)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from fakegoogle import FakeGoogle
from proxy import cli
from tests.audit_records import wait_for_records
from tests.proxyproc import ROOT, ProxyProcess, base_env

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# Every record has every one of these keys, with these types (docs/audit.md).
SCHEMA: dict[str, Any] = {
    "time": str, "duration_ms": (int, float), "client": str, "method": str, "scheme": str, "host": str,
    "path": str, "status": (int, type(None)), "request_bytes": (int, type(None)),
    "response_bytes": (int, type(None)), "http_version": str, "auth": str,
    "principal": (str, type(None)), "token_id": (str, type(None)), "route": (str, type(None)),
    "credential": (str, type(None)), "rule": (str, type(None)), "proxy_user": (str, type(None)),
}
OPTIONAL: dict[str, Any] = {
    "quota_project": str, "service": str, "api_method": str, "resource": str, "retried": bool,
    "upstream_request_id": str, "error": str,
}
AUTH_VALUES = {"injected", "client", "none", "failed", "denied"}


def check_schema(record: dict[str, Any]) -> None:
    for name, kind in SCHEMA.items():
        assert name in record, f"{name} missing from {record}"
        assert isinstance(record[name], kind), f"{name}={record[name]!r} in {record}"
    for name, kind in OPTIONAL.items():
        if name in record:
            assert isinstance(record[name], kind), f"{name}={record[name]!r}"
    assert set(record) <= set(SCHEMA) | set(OPTIONAL), set(record) - set(SCHEMA) - set(OPTIONAL)
    assert TIME.match(record["time"]), record["time"]
    assert record["auth"] in AUTH_VALUES
    assert record["status"] is not None or "error" in record


def session_via(proxy: ProxyProcess, verify: str | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy.url, "http": proxy.url}
    s.verify = verify or str(proxy.ca_cert)
    return s


def run_client(proxy: ProxyProcess, action: str) -> dict[str, Any]:
    env = base_env(HTTPS_PROXY=proxy.url, REQUESTS_CA_BUNDLE=str(proxy.ca_cert))
    out = subprocess.run([sys.executable, "-m", "tests.audit_client", action], cwd=ROOT, env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def curl_upload(proxy: ProxyProcess, body: Path, name: str) -> subprocess.CompletedProcess[str]:
    """A >1 MiB upload, which mitmproxy streams; stdout is the upload's status ("000": cut off).

    A small request opens the connection first: a body that races the proxy's own TLS handshake
    trips the (in-progress) header-size limit, which is not what these tests are about.
    """
    url = f"https://storage.googleapis.com/upload/storage/v1/b/demo-bucket/o?uploadType=media&name={name}"
    common = ["-x", proxy.url, "--cacert", str(proxy.ca_cert), "-sS", "-o", "/dev/null", "-w", "%{http_code} "]
    out = subprocess.run(["curl", *common,
                          "https://storage.googleapis.com/echo", "--next", *common,
                          "--data-binary", f"@{body}", url],
                         env=base_env(), capture_output=True, text=True, timeout=60, check=False)
    out.stdout = out.stdout.split()[-1] if out.stdout.split() else ""
    return out


@pytest.fixture
def big_body(tmp_path: Path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(b"z" * (2 * 1024 * 1024))
    return path


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.jsonl"


@pytest.fixture
def audited(proxy_factory: Any, audit_path: Path) -> ProxyProcess:
    pp = proxy_factory("--audit-log", str(audit_path))
    pp.wait_for_line("token available")
    return pp


def test_storage_upload_and_download_records(audited: ProxyProcess, audit_path: Path):
    result = run_client(audited, "storage")
    assert result == {"small": 1000, "big": 3 * 1024 * 1024}
    records = wait_for_records(audit_path, 4)
    for r in records:
        check_schema(r)
    uploads = [r for r in records if r.get("api_method") == "storage.objects.insert"]
    downloads = [r for r in records if r.get("api_method") == "storage.objects.get"]
    assert len(uploads) == 2 and len(downloads) == 2, records
    for r in uploads + downloads:
        assert r["service"] == "storage" and r["host"] == "storage.googleapis.com"
        assert r["status"] == 200 and r["auth"] == "injected" and r["scheme"] == "https"
        assert r["principal"].endswith(".iam.gserviceaccount.com")
        assert r["token_id"].startswith("sha256:")
        assert r["client"].startswith("127.0.0.1:")
    big_up = max(uploads, key=lambda r: r["request_bytes"])
    assert big_up["method"] == "POST" and "uploadType=multipart" in big_up["path"]
    assert big_up["request_bytes"] > 3 * 1024 * 1024  # streamed through, counted chunk by chunk
    assert big_up["resource"] == "projects/_/buckets/demo-bucket"
    big_down = max(downloads, key=lambda r: r["response_bytes"])
    assert big_down["response_bytes"] == 3 * 1024 * 1024
    assert big_down["resource"] == "projects/_/buckets/demo-bucket/objects/audit/big.bin"
    assert big_down["request_bytes"] == 0


def test_compute_list_record(audited: ProxyProcess, audit_path: Path):
    result = run_client(audited, "compute")
    assert result["instances"]
    [record] = wait_for_records(audit_path, 1)
    check_schema(record)
    assert record["service"] == "compute"
    assert record["api_method"] == "compute.instances.list"
    assert record["resource"] == "projects/fake-project/zones/us-central1-a/instances"
    assert record["method"] == "GET" and record["status"] == 200 and record["auth"] == "injected"
    assert record["response_bytes"] > 0


def test_failed_token_record(proxy_factory: Any, fake: FakeGoogle, audit_path: Path):
    fake.set_token_failure("500")
    pp = proxy_factory("--audit-log", str(audit_path))
    r = session_via(pp).get("https://storage.googleapis.com/storage/v1/b/demo-bucket/o", timeout=30)
    assert r.status_code == 502
    [record] = wait_for_records(audit_path, 1)
    check_schema(record)
    assert record["auth"] == "failed" and record["status"] == 502
    assert record["token_id"] is None and "token" in record["error"]
    assert record["api_method"] == "storage.objects.list"


def test_failed_token_on_a_streamed_upload_is_closed_and_audited(proxy_factory: Any, fake: FakeGoogle,
                                                                 audit_path: Path, big_body: Path):
    fake.set_token_failure("500")
    pp = proxy_factory("--audit-log", str(audit_path))
    out = curl_upload(pp, big_body, "big")
    assert out.returncode != 0 and out.stdout == "000", out  # cannot be answered: the stream is reset
    warm_up, record = wait_for_records(audit_path, 2)
    assert warm_up["status"] == 502
    check_schema(record)
    assert record["auth"] == "failed" and record["status"] is None
    assert "token" in record["error"] and "streaming" in record["error"]
    assert record["api_method"] == "storage.objects.insert"
    assert not [q for q in fake.requests if q.path.startswith("/upload/")]


def test_passthrough_host_is_not_audited(audited: ProxyProcess, audit_path: Path, fake: FakeGoogle):
    s = session_via(audited, verify=str(fake.other_ca_pem))
    assert s.get("https://www.example.test/echo", timeout=20).status_code == 200
    # A Google call afterwards: once its record is there, the tunnel's would have been too.
    assert session_via(audited).get("https://storage.googleapis.com/echo", timeout=20).status_code == 200
    records = wait_for_records(audit_path, 1)
    assert [r["host"] for r in records] == ["storage.googleapis.com"]
    check_schema(records[0])


SECRETS = {
    "key": "SECRETKEY1", "access_token": "SECRETACCESS2", "X-Goog-Signature": "SECRETSIG3",
    "X-Goog-Credential": "SECRETCRED4", "upload_id": "SECRETUPLOAD5", "signature": "SECRETSIG6",
}
SECRET_HEADERS = {"Cookie": "session=SECRETCOOKIE7", "X-Goog-IAM-Authorization-Token": "SECRETIAM8"}


def test_secrets_never_reach_the_audit_log(audited: ProxyProcess, audit_path: Path, fake: FakeGoogle):
    query = "&".join(f"{k}={v}" for k, v in SECRETS.items())
    s = session_via(audited)
    assert s.get(f"https://storage.googleapis.com/echo?{query}&alt=json", headers=SECRET_HEADERS,
                 timeout=20).status_code == 200
    # The client's own credential is kept (auth=client) but never recorded.
    assert s.get(f"https://storage.googleapis.com/echo?{query}", timeout=20,
                 headers={"Authorization": "Bearer SECRETCLIENT9"}).status_code == 200
    records = wait_for_records(audit_path, 2)
    text = audit_path.read_text()
    for secret in [*SECRETS.values(), *SECRET_HEADERS.values(), "SECRETCLIENT9", *fake.issued_tokens]:
        assert secret.split("=")[-1] not in text
    assert "alt=json" in records[0]["path"] and "key=REDACTED" in records[0]["path"]
    assert [r["auth"] for r in records] == ["injected", "client"]
    assert records[1]["token_id"] is None


def test_audit_write_failure_refuses_traffic(proxy_factory: Any, fake: FakeGoogle, big_body: Path):
    pp = proxy_factory("--audit-log", "/dev/full")
    pp.wait_for_line("token available")
    s = session_via(pp)
    url = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media"
    # Went upstream, could not be recorded: the answer streams, so its head is out already; its last
    # byte is kept until the record is written, so the client gets a cut-off answer, never a result.
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        s.get(url, timeout=20)
    fake.clear_requests()
    for _ in range(3):
        r = s.get(url, timeout=20)
        assert r.status_code == 503 and "audit log" in r.json()["error"]["message"]
    out = curl_upload(pp, big_body, "x")  # a streamed upload cannot be answered: it is cut off
    assert out.returncode != 0 and out.stdout == "000", out
    assert s.get("https://storage.googleapis.com/echo", timeout=20).status_code == 503
    assert fake.requests == []  # nothing reached Google unaudited
    pp.stop()
    assert pp.text().count("cannot be written") == 1


def test_sighup_reopens_the_audit_log(proxy_process_factory: Any, audit_path: Path):
    audited = proxy_process_factory("--audit-log", str(audit_path))  # a process: it takes a signal
    audited.wait_for_line("token available")
    s = session_via(audited)
    assert s.get("https://storage.googleapis.com/echo?n=1", timeout=20).status_code == 200
    wait_for_records(audit_path, 1)
    rotated = audit_path.with_suffix(".1")
    audit_path.rename(rotated)
    audited.proc.send_signal(signal.SIGHUP)
    audited.wait_for_line("reopened the audit log")
    assert s.get("https://storage.googleapis.com/echo?n=2", timeout=20).status_code == 200
    [after] = wait_for_records(audit_path, 1)
    assert "n=2" in after["path"]
    assert [json.loads(line)["path"] for line in rotated.read_text().splitlines()] == ["/echo?n=1"]


def test_audit_summary_over_a_real_run(audited: ProxyProcess, audit_path: Path, capsys: Any):
    run_client(audited, "storage")
    run_client(audited, "compute")
    records = wait_for_records(audit_path, 5)
    with audit_path.open("a") as f:
        f.write("not json\n")
    assert cli.main(["audit", "summary", str(audit_path)]) == 0
    text = capsys.readouterr().out
    for needle in ("storage.objects.insert", "storage.objects.get", "compute.instances.list",
                   "demo-sa@fake-project.iam.gserviceaccount.com", "Slowest calls", "1 lines were not"):
        assert needle in text, text
    assert cli.main(["audit", "summary", str(audit_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["calls"] == len(records)
    assert summary["totals"]["request_bytes"] == sum(r["request_bytes"] or 0 for r in records)
    by_method = {c["api_method"]: c["calls"] for c in summary["calls"]}
    assert by_method["storage.objects.insert"] == 2 and by_method["compute.instances.list"] == 1


def test_audit_summary_reads_stdin(audited: ProxyProcess, audit_path: Path):
    assert session_via(audited).get("https://storage.googleapis.com/echo", timeout=20).status_code == 200
    wait_for_records(audit_path, 1)
    out = subprocess.run([sys.executable, "-m", "proxy", "audit", "summary", "-", "--json"], cwd=ROOT, check=False,
                         env=base_env(), input=audit_path.read_text(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["totals"]["calls"] == 1


def test_audit_summary_unreadable_file_is_one_sentence(tmp_path: Path, capsys: Any):
    assert cli.main(["audit", "summary", str(tmp_path / "missing.jsonl")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("gcp-auth-proxy: cannot read audit log") and "Traceback" not in err


def test_audit_log_to_stdout(proxy_process_factory: Any):
    pp = proxy_process_factory("--audit-log", "-")  # a process: its stdout is the point
    pp.wait_for_line("token available")
    assert session_via(pp).get("https://storage.googleapis.com/echo?x=1", timeout=20).status_code == 200
    line = pp.wait_for_line('"path":"/echo?x=1"')
    check_schema(json.loads(line[line.index("{"):]))



def test_operational_logs_as_json(proxy_process_factory: Any, audit_path: Path):
    # A process: the CLI's own logging set-up and start-up line are the point.
    pp = proxy_process_factory("--log-format", "json", "--audit-log", str(audit_path))
    pp.wait_for_line("token available")
    assert session_via(pp).get("https://storage.googleapis.com/echo", timeout=20).status_code == 200
    wait_for_records(audit_path, 1)
    pp.stop()
    entries = [json.loads(line) for line in pp.text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    start = next(e for e in entries if e["message"].startswith("listening on"))
    assert "CA certificate" in start["message"] and f"audit log {audit_path}" in start["message"]
    assert any("service_account credentials for demo-sa@" in e["message"] for e in entries)
