"""End to end: the real proxy process, the fake Google, real clients with no credentials."""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import requests

from fakegoogle import FakeGoogle
from tests.proxyproc import ProxyProcess, base_env


def session_via(proxy: ProxyProcess, verify: str | bool | None = None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy.url, "http": proxy.url}
    s.verify = str(proxy.ca_cert) if verify is None else verify
    return s


def test_requests_lists_buckets_with_injected_token(proxy: ProxyProcess, fake: FakeGoogle):
    r = session_via(proxy).get("https://storage.googleapis.com/storage/v1/b?project=fake-project", timeout=20)
    assert r.status_code == 200, r.text
    assert "demo-bucket" in r.text
    seen = [q for q in fake.requests if q.path.startswith("/storage/v1/b")]
    assert seen and all(q.token_valid for q in seen)


def test_curl_downloads_object(proxy: ProxyProcess, fake: FakeGoogle):
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-x", proxy.url, "--cacert", str(proxy.ca_cert),
         "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media"],
        env=base_env(), capture_output=True, timeout=30, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from fake Google\n"


GCS_SCRIPT = r"""
import sys
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

client = storage.Client(project="fake-project", credentials=AnonymousCredentials())
names = [b.name for b in client.list_buckets()]
assert "demo-bucket" in names, names
blob = client.bucket("demo-bucket").blob("e2e/upload.txt")
blob.upload_from_string(b"uploaded through the proxy")
assert client.bucket("demo-bucket").blob("e2e/upload.txt").download_as_bytes() == b"uploaded through the proxy"
print("ok", len(names))
"""

COMPUTE_SCRIPT = r"""
from google.auth.credentials import AnonymousCredentials
from google.cloud import compute_v1

client = compute_v1.InstancesClient(credentials=AnonymousCredentials(), transport="rest")
names = [i.name for i in client.list(project="fake-project", zone="us-central1-a")]
assert names, names
print("ok", ",".join(names))
"""


def client_env(proxy: ProxyProcess) -> dict[str, str]:
    ca = str(proxy.ca_cert)
    return base_env(HTTPS_PROXY=proxy.url, REQUESTS_CA_BUNDLE=ca, SSL_CERT_FILE=ca)


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_google_cloud_storage_with_anonymous_credentials(proxy: ProxyProcess, fake: FakeGoogle):
    out = run_python(GCS_SCRIPT, client_env(proxy))
    assert out.returncode == 0, out.stderr
    uploads = [q for q in fake.requests if q.path.startswith("/upload/storage/v1/b/demo-bucket/o")]
    assert uploads and all(q.token_valid for q in uploads)


def test_google_cloud_compute_rest_lists_instances(proxy: ProxyProcess, fake: FakeGoogle):
    out = run_python(COMPUTE_SCRIPT, client_env(proxy))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")
    assert any(q.host == "compute.googleapis.com" and q.token_valid for q in fake.requests)


def test_curl_http2_is_served(proxy: ProxyProcess, fake: FakeGoogle):
    out = subprocess.run(
        ["curl", "-sS", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", "-x", proxy.url,
         "--cacert", str(proxy.ca_cert), "https://storage.googleapis.com/storage/v1/b/demo-bucket"],
        env=base_env(), capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.stdout == "2 200", out.stderr
    assert any(q.path == "/storage/v1/b/demo-bucket" and q.http_version == "2" for q in fake.requests)


def test_passthrough_host_is_tunnelled_untouched(proxy: ProxyProcess, fake: FakeGoogle):
    # The client trusts only the origin's own CA: success proves the proxy did not intercept.
    r = session_via(proxy, verify=str(fake.other_ca_pem)).get("https://www.example.test/echo", timeout=20)
    assert r.status_code == 200
    seen = r.json()
    names = {k.lower() for k in seen["headers"]}
    assert "authorization" not in names and "x-goog-user-project" not in names
    with pytest.raises(requests.exceptions.SSLError):
        session_via(proxy).get("https://www.example.test/echo", timeout=20)  # the proxy CA is not used


@pytest.mark.parametrize("host", ["storage.googleapis.com.evil.test", "evilgoogleapis.com"])
def test_no_token_for_lookalike_host(proxy_factory, fake: FakeGoogle, host: str):
    o_host, o_port = fake.other_addr
    pp = proxy_factory("--resolve", f"*.evil.test={o_host}:{o_port}", "--resolve", f"evilgoogleapis.com={o_host}:{o_port}")
    pp.wait_for_line("token available")
    r = session_via(pp, verify=False).get(f"https://{host}/echo", timeout=20)
    assert r.status_code == 200
    assert "authorization" not in {k.lower() for k in r.json()["headers"]}


def test_spoofed_host_header_gets_no_token(proxy_factory, fake: FakeGoogle):
    """SNI decides, not Host: a tunnel to a look-alike with Host: storage.googleapis.com stays tokenless."""
    o_host, o_port = fake.other_addr
    pp = proxy_factory("--resolve", f"*.evil.test={o_host}:{o_port}")
    r = session_via(pp, verify=False).get(
        "https://look.evil.test/echo", headers={"Host": "storage.googleapis.com"}, timeout=20
    )
    assert r.status_code == 200
    assert "authorization" not in {k.lower() for k in r.json()["headers"]}


class _RecordingHandler(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        _RecordingHandler.seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RecordingHandler.seen = []
    yield server
    server.shutdown()
    server.server_close()


def test_plaintext_never_carries_a_token(proxy_factory, fake: FakeGoogle, plain_origin):
    port = plain_origin.server_address[1]
    pp = proxy_factory("--resolve", f"*.plain.test=127.0.0.1:{port}")
    pp.wait_for_line("token available")
    r = session_via(pp).get(f"http://www.plain.test:{port}/x", timeout=20)
    assert r.status_code == 200
    assert _RecordingHandler.seen and "authorization" not in _RecordingHandler.seen[0]


def test_plain_http_to_injected_host_is_upgraded_to_tls(proxy: ProxyProcess, fake: FakeGoogle):
    r = session_via(proxy).get("http://storage.googleapis.com/storage/v1/b/demo-bucket", timeout=20)
    assert r.status_code == 200, r.text
    # The fake only speaks TLS: it saw the request with a valid token, so it went upstream over TLS.
    assert any(q.path == "/storage/v1/b/demo-bucket" and q.token_valid for q in fake.requests)


def test_proxy_process_runs_under_python_optimize(proxy_process: ProxyProcess):
    """serve re-executes itself under -O (mitmproxy's debug type checks cost 10-16 % CPU)."""
    from pathlib import Path

    cmdline = Path(f"/proc/{proxy_process.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-O" in cmdline, cmdline
