"""Token life through the real proxy: each credential source, single-flight, revocation, outages."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
from pathlib import Path

import pytest
import requests

from fakegoogle import FakeGoogle
from tests.proxyproc import ProxyProcess
from tests.test_proxy_e2e import session_via

BUCKET_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket"


def get_bucket(pp: ProxyProcess) -> requests.Response:
    return session_via(pp).get(BUCKET_URL, timeout=30)


def eventually_ok(pp: ProxyProcess, deadline_s: float = 30.0) -> requests.Response:
    """Poll (bounded) until the proxy serves 200: recovery happens on the proxy's own backoff clock."""
    deadline = time.monotonic() + deadline_s
    while True:
        r = get_bucket(pp)
        if r.status_code == 200 or time.monotonic() > deadline:
            return r


def test_service_account_key(proxy_factory, fake: FakeGoogle):
    pp = proxy_factory()
    assert "service_account credentials for demo-sa@" in pp.wait_for_line("token available")
    assert get_bucket(pp).status_code == 200


def test_gcloud_authorized_user_credentials(proxy_factory, fake: FakeGoogle, tmp_path: Path):
    # gcloud user ADC always calls oauth2.googleapis.com: --resolve is what makes it reach the fake.
    adc = fake.write_authorized_user(tmp_path / "adc.json", quota_project="billing-project")
    pp = proxy_factory(credentials=adc)
    assert "authorized_user credentials" in pp.wait_for_line("token available")
    r = session_via(pp).get("https://storage.googleapis.com/echo", timeout=30)
    assert r.status_code == 200
    seen = [q for q in fake.requests if q.path == "/echo"]
    assert seen[-1].token_valid and seen[-1].headers.get("x-goog-user-project") == "billing-project"


def test_gce_metadata_server(proxy_process_factory, fake: FakeGoogle):
    # A process: google-auth reads the metadata server's address at import.
    env = {**fake.env_for_metadata(), "NO_GCE_CHECK": "false"}
    pp = proxy_process_factory(env=env, credentials=None)
    assert "gce_metadata credentials for metadata-sa@" in pp.wait_for_line("token available")
    assert get_bucket(pp).status_code == 200


def test_cold_start_with_200_concurrent_requests_fetches_one_token(proxy_factory, fake: FakeGoogle):
    fake.set_token_failure("hang")  # hold the first fetch so every request arrives before a token exists
    before, asked = fake.token_fetches, fake.token_requests  # the fake's counters are for the whole session
    pp = proxy_factory()
    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        futures = [pool.submit(get_bucket, pp) for _ in range(200)]
        # Release the token endpoint once the proxy has asked for a token.
        assert fake.wait_for_token_requests(asked + 1)
        fake.set_token_failure(None)
        statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 200
    assert fake.token_fetches - before == 1


def test_revoked_token_is_replaced_and_the_client_still_succeeds(proxy: ProxyProcess, fake: FakeGoogle):
    assert get_bucket(proxy).status_code == 200
    before = fake.token_fetches
    fake.revoke_all()
    r = get_bucket(proxy)
    assert r.status_code == 200, r.text
    assert fake.token_fetches - before == 1


def test_token_endpoint_down_gives_json_502_then_recovers(proxy_factory, fake: FakeGoogle):
    fake.set_token_failure("500")
    pp = proxy_factory()
    r = get_bucket(pp)
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == 502 and error["status"] == "UNAVAILABLE"
    assert "token" in error["message"].lower()
    assert "Bearer" not in r.text
    # Never forwarded without a token: the origin saw nothing for this bucket.
    assert not any(q.path == "/storage/v1/b/demo-bucket" for q in fake.requests)
    fake.set_token_failure(None)
    assert eventually_ok(pp).status_code == 200
    assert pp.proc.poll() is None


def test_invalid_grant_message_says_what_to_do(proxy_factory, fake: FakeGoogle):
    fake.set_token_failure("invalid_grant")
    pp = proxy_factory()
    r = get_bucket(pp)
    assert r.status_code == 502
    assert "invalid_grant" in r.json()["error"]["message"]
    assert not any(q.path == "/storage/v1/b/demo-bucket" for q in fake.requests)


def test_missing_credentials_then_credentials_appear(proxy_factory, fake: FakeGoogle, tmp_path: Path):
    key_path = tmp_path / "later.json"
    pp = proxy_factory(credentials=key_path)  # GOOGLE_APPLICATION_CREDENTIALS names a file not yet there
    r = get_bucket(pp)
    assert r.status_code == 502
    assert "does not exist" in r.json()["error"]["message"]
    fake.write_service_account_key(key_path)
    assert eventually_ok(pp).status_code == 200


def test_unreadable_key_file_is_a_clear_502(proxy_factory, fake: FakeGoogle, tmp_path: Path):
    key_path = tmp_path / "garbage.json"
    key_path.write_text("{not json")
    pp = proxy_factory(credentials=key_path)
    r = get_bucket(pp)
    assert r.status_code == 502
    assert "credentials file" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "payload",
    [
        os.urandom(4096),
        b"GET / HTTP/1.1\r\n\r\n",
        b"CONNECT storage.googleapis.com:443 HTTP/1.1\r\n\r\n" + os.urandom(512),
        b"GET http://storage.googleapis.com/ HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + os.urandom(256),
        b"\x16\x03\x01\x02\x00" + os.urandom(600),
        b"GET /" + b"A" * 70000 + b" HTTP/1.1\r\n\r\n",
    ],
    ids=["random", "no-host", "connect-then-garbage", "bad-length", "h2-preface-garbage", "tls-garbage", "long-line"],
)
def test_garbage_on_the_proxy_port_leaves_it_serving(proxy: ProxyProcess, fake: FakeGoogle, payload: bytes):
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        try:
            answer = s.recv(65536)
        except OSError:
            answer = b""
    assert b"ya29." not in answer
    assert get_bucket(proxy).status_code == 200
