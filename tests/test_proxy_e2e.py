"""End to end: the real proxy process, the fake Google, real clients with no credentials."""

from __future__ import annotations

import json
import subprocess

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
        env=base_env(), capture_output=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"hello from fake Google\n"
