"""End-to-end tests of the fakegoogle package through real clients (no mocks)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import google.auth.transport.requests
import google_crc32c
import h2.connection
import h2.events
import pytest
import requests
from google.auth import compute_engine
from google.auth.exceptions import RefreshError
from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from fakegoogle import FakeGoogle
from fakegoogle.storage_model import pattern_bytes
from fakegoogle.testing import route_urllib3_to

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
STORAGE = "https://storage.googleapis.com"


@pytest.fixture(autouse=True)
def _reset(fg: FakeGoogle) -> Iterator[None]:
    yield
    fg.set_token_failure(None)


@pytest.fixture
def session(fg: FakeGoogle) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides s.verify
    s.verify = str(fg.google_ca_pem)
    return s


def sa_credentials(fg: FakeGoogle, tmp_path: Path) -> service_account.Credentials:
    key = fg.write_service_account_key(tmp_path / "sa.json")
    return service_account.Credentials.from_service_account_file(str(key), scopes=SCOPES)


def fresh_token(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> str:
    creds = sa_credentials(fg, tmp_path)
    creds.refresh(google.auth.transport.requests.Request(session))
    assert creds.token
    return str(creds.token)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_jwt_grant_token_lists_buckets(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session
) -> None:
    before = fg.token_fetches
    token = fresh_token(fg, tmp_path, session)
    assert token.startswith("ya29.fake-") and token in fg.issued_tokens
    assert fg.token_fetches == before + 1
    fg.clear_requests()
    resp = session.get(
        f"{STORAGE}/storage/v1/b", params={"project": "fake-project"}, headers=bearer(token)
    )
    assert resp.status_code == 200
    assert "demo-bucket" in [b["name"] for b in resp.json()["items"]]
    [rec] = fg.requests
    assert (rec.host, rec.method, rec.token_valid, rec.server) == (
        "storage.googleapis.com",
        "GET",
        True,
        "googleapis",
    )
    assert (
        rec.path == "/storage/v1/b?project=fake-project" and rec.authorization == f"Bearer {token}"
    )


def test_bad_signature_is_invalid_grant(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session
) -> None:
    key_file = fg.write_service_account_key(tmp_path / "sa.json")
    info = json.loads(key_file.read_text())
    other = json.loads(fg.write_service_account_key(tmp_path / "other.json").read_text())
    info["private_key"] = other["private_key"]  # right kid/email, wrong signing key
    creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(google.auth.transport.requests.Request(session))


def test_refresh_token_grant(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> None:
    path = fg.write_authorized_user(tmp_path / "adc.json", quota_project="qp")
    info = json.loads(path.read_text())
    assert info["type"] == "authorized_user" and info["quota_project_id"] == "qp"
    creds = user_credentials.Credentials.from_authorized_user_file(str(path))
    creds.refresh(google.auth.transport.requests.Request(session))
    assert creds.token in fg.issued_tokens
    info["refresh_token"] = "1//bogus"
    bad = user_credentials.Credentials.from_authorized_user_info(info)
    with pytest.raises(RefreshError):
        bad.refresh(google.auth.transport.requests.Request(session))


def test_metadata_server(
    fg: FakeGoogle, monkeypatch: pytest.MonkeyPatch, session: requests.Session
) -> None:
    base = f"http://{fg.env_for_metadata()['GCE_METADATA_HOST']}"
    denied = requests.get(f"{base}/computeMetadata/v1/project/project-id")
    assert denied.status_code == 403
    ok = requests.get(
        f"{base}/computeMetadata/v1/project/project-id", headers={"Metadata-Flavor": "Google"}
    )
    assert ok.text == "fake-project" and ok.headers["Metadata-Flavor"] == "Google"
    for key, value in fg.env_for_metadata().items():
        monkeypatch.setenv(key, value)
    creds = compute_engine.Credentials()
    creds.refresh(google.auth.transport.requests.Request(session))
    assert creds.service_account_email == "metadata-sa@fake-project.iam.gserviceaccount.com"
    resp = session.get(f"{STORAGE}/storage/v1/b/demo-bucket", headers=bearer(str(creds.token)))
    assert resp.status_code == 200


def test_unknown_and_revoked_tokens_get_401(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session
) -> None:
    url = f"{STORAGE}/storage/v1/b/demo-bucket"
    for headers in ({}, bearer("ya29.not-issued")):
        resp = session.get(url, headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="https://accounts.google.com/"'
    token = fresh_token(fg, tmp_path, session)
    assert session.get(url, headers=bearer(token)).status_code == 200
    fg.revoke(token)
    assert session.get(url, headers=bearer(token)).status_code == 401
    assert fg.requests[-1].token_valid is False


def test_echo_hides_authorization(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session
) -> None:
    token = fresh_token(fg, tmp_path, session)
    body = session.get(
        "https://compute.googleapis.com/echo", headers={**bearer(token), "X-Custom": "1"}
    ).json()
    assert body["authorization_present"] and body["token_valid"]
    assert "authorization" not in body["headers"] and body["headers"]["x-custom"] == "1"
    assert token not in json.dumps(body)


def test_upload_download_round_trip(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session
) -> None:
    from google.cloud import storage  # real client library, resumable + multipart paths

    creds = sa_credentials(fg, tmp_path)
    http = google.auth.transport.requests.AuthorizedSession(
        creds, auth_request=google.auth.transport.requests.Request(session)
    )
    http.trust_env, http.verify = False, str(fg.google_ca_pem)
    client = storage.Client(project="fake-project", credentials=creds, _http=http)
    bucket = client.bucket("demo-bucket")
    small = b"small object\n"
    bucket.blob("dir/small.txt").upload_from_string(small, content_type="text/plain")
    big = bytes(range(256)) * 4096 * 3 + b"tail"  # > chunk size: exercises resumable chunks
    blob = bucket.blob("dir/big.bin", chunk_size=256 * 1024)
    blob.upload_from_string(big)
    assert bucket.blob("dir/small.txt").download_as_bytes() == small
    assert bucket.blob("dir/big.bin").download_as_bytes() == big
    assert bucket.blob("dir/big.bin").download_as_bytes(start=10, end=19) == big[10:20]
    names = [b.name for b in client.list_blobs("demo-bucket", prefix="dir/")]
    assert names == ["dir/big.bin", "dir/small.txt"]
    meta = bucket.get_blob("dir/big.bin")
    assert (
        meta.size == len(big)
        and meta.md5_hash == base64.b64encode(hashlib.md5(big).digest()).decode()
    )
    assert meta.crc32c == base64.b64encode(google_crc32c.Checksum(big).digest()).decode()
    # XML API read of the same object
    token = str(creds.token)
    xml = session.get(f"{STORAGE}/demo-bucket/dir/small.txt", headers=bearer(token))
    assert xml.content == small and "md5=" in xml.headers["x-goog-hash"]
    bucket.blob("dir/small.txt").delete()
    assert (
        session.get(
            f"{STORAGE}/storage/v1/b/demo-bucket/o/dir%2Fsmall.txt", headers=bearer(token)
        ).status_code
        == 404
    )


def test_bench_object_streams(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> None:
    token = fresh_token(fg, tmp_path, session)
    size = 5 * 1024 * 1024 + 7
    url = f"{STORAGE}/download/storage/v1/b/bench/o/size-{size}?alt=media"
    resp = session.get(url, headers=bearer(token), stream=True)
    total, digest = 0, hashlib.md5()
    for chunk in resp.iter_content(1 << 16):
        total += len(chunk)
        digest.update(chunk)
    assert resp.status_code == 200 and total == size
    assert digest.digest() == hashlib.md5(b"".join(pattern_bytes(0, size) for _ in [0])).digest()
    ranged = session.get(url, headers={**bearer(token), "Range": "bytes=1000-1009"})
    assert ranged.status_code == 206 and ranged.content == pattern_bytes(1000, 10)
    # streaming upload into bench: counted and hashed, not stored
    payload = b"x" * (3 * 1024 * 1024)
    up = session.post(
        f"{STORAGE}/upload/storage/v1/b/bench/o",
        params={"uploadType": "media", "name": "up"},
        data=iter([payload[: 1 << 20], payload[1 << 20 :]]),
        headers=bearer(token),
    )
    assert up.status_code == 200 and up.json()["size"] == str(len(payload))
    assert up.json()["md5Hash"] == base64.b64encode(hashlib.md5(payload).digest()).decode()


def test_token_failure_modes(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> None:
    creds = sa_credentials(fg, tmp_path)
    request = google.auth.transport.requests.Request(session)
    form = {
        "grant_type": "refresh_token",
        "client_id": "x",
        "client_secret": "y",
        "refresh_token": "z",
    }
    fg.set_token_failure("500")
    resp = session.post("https://oauth2.googleapis.com/token", data=form)
    assert resp.status_code == 500 and "error" in resp.json()
    fg.set_token_failure("429")
    resp = session.post("https://oauth2.googleapis.com/token", data=form)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
    fg.set_token_failure("invalid_grant")
    with pytest.raises(RefreshError, match="invalid_grant"):
        creds.refresh(request)
    meta = requests.get(
        f"http://{fg.metadata_addr[0]}:{fg.metadata_addr[1]}/computeMetadata/v1/instance/"
        "service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"},
    )
    assert meta.status_code == 400
    fg.set_token_failure(None)
    creds.refresh(request)
    assert creds.valid


def test_hang_blocks_neither_others_nor_stop(tmp_path: Path) -> None:
    with FakeGoogle(tmp_path) as fake, route_urllib3_to(fake):
        fake.set_token_failure("hang")
        outcome: list[object] = []

        def hung_call() -> None:
            try:
                outcome.append(
                    requests.post(
                        "https://oauth2.googleapis.com/token",
                        data={"grant_type": "x"},
                        verify=str(fake.google_ca_pem),
                        timeout=10,
                    ).status_code
                )
            except requests.RequestException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=hung_call)
        thread.start()
        time.sleep(0.2)
        assert not outcome  # still parked
        echo = requests.get(
            "https://storage.googleapis.com/echo", verify=str(fake.google_ca_pem), timeout=5
        )
        assert echo.status_code == 200
        started = time.monotonic()
    assert time.monotonic() - started < 3
    thread.join(5)
    assert outcome and not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(fake.googleapis_addr, timeout=1)


def test_other_origin_uses_its_own_ca(fg: FakeGoogle) -> None:
    resp = requests.get(
        "https://www.example.test/some/path?q=1",
        verify=str(fg.other_ca_pem),
        headers={"Authorization": "Bearer secret"},
    )
    body = resp.json()
    assert body["path"] == "/some/path?q=1" and body["headers"]["authorization"] == "<present>"
    assert fg.requests[-1].server == "other"
    with pytest.raises(requests.exceptions.SSLError):
        requests.get("https://www.example.test/", verify=str(fg.google_ca_pem))


def test_h2_negotiated_and_served(fg: FakeGoogle) -> None:
    ctx = ssl.create_default_context(cafile=str(fg.google_ca_pem))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(fg.googleapis_addr) as raw,
        ctx.wrap_socket(raw, server_hostname="storage.googleapis.com") as tls,
    ):
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":path", "/echo"),
                (":scheme", "https"),
                (":authority", "storage.googleapis.com"),
            ],
            end_stream=True,
        )
        tls.sendall(conn.data_to_send())
        body, done = b"", False
        while not done:
            for event in conn.receive_data(tls.recv(65536)):
                if isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                done = done or isinstance(event, h2.events.StreamEnded)
            tls.sendall(conn.data_to_send())
    assert json.loads(body)["http_version"] == "2"


def test_compute_and_admin(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> None:
    token = fresh_token(fg, tmp_path, session)
    url = "https://compute.googleapis.com/compute/v1/projects/fake-project/zones/us-central1-a/instances"
    items = session.get(url, headers=bearer(token)).json()["items"]
    assert items[0]["kind"] == "compute#instance" and items[0]["status"] == "RUNNING"
    assert (
        session.get("https://compute.googleapis.com/nope", headers=bearer(token)).json()["error"][
            "code"
        ]
        == 404
    )
    admin = f"http://{fg.metadata_addr[0]}:{fg.metadata_addr[1]}/_fake"
    stats = requests.get(f"{admin}/stats").json()
    assert stats["token_fetches"] == fg.token_fetches and stats["requests"] >= 2
    assert requests.post(f"{admin}/revoke_all").status_code == 200
    assert session.get(url, headers=bearer(token)).status_code == 401


def test_cli_prints_json_and_exits_cleanly(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakegoogle", "--workdir", str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        info = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        assert Path(info["service_account_key"]).exists() and Path(info["google_ca_pem"]).exists()
        stats = requests.get(f"{info['admin_url']}/stats", timeout=5).json()
        assert stats["token_fetches"] == 0
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
