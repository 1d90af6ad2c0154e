"""The AuditLog addon in isolation: mitmproxy's test context and test flows, no network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow

from addons import audit_log
from addons.audit_log import AuditLog, ByteCounter, audit_record, body_bytes
from tests.test_audit_e2e import check_schema

ROOT = Path(__file__).resolve().parent.parent


def google_flow(path: str = "/storage/v1/b/b1/o/a.txt?alt=media", **meta: Any) -> http.HTTPFlow:
    f = tflow.tflow(resp=True)
    f.request.host = "127.0.0.1"  # what an address override leaves here: never the audited host
    f.request.scheme = "https"
    f.request.path = path
    f.metadata["gauth"] = {"host": "storage.googleapis.com", "auth": "injected",
                           "principal": "sa@p.iam.gserviceaccount.com", "token_id": "sha256:abc", **meta}
    return f


def test_record_names_the_requested_host_and_the_api_call():
    record = audit_record(google_flow())
    check_schema(record)
    assert record["host"] == "storage.googleapis.com"
    assert (record["service"], record["api_method"], record["resource"]) == (
        "storage", "storage.objects.get", "projects/_/buckets/b1/objects/a.txt")


def test_record_of_a_failed_flow_has_null_status_and_the_error():
    f = google_flow()
    f.response = None
    f.error = tflow.terr("connection refused by upstream")
    record = audit_record(f)
    check_schema(record)
    assert record["status"] is None and record["error"] == "connection refused by upstream"
    assert record["response_bytes"] is None


def test_record_keeps_quota_project_and_retry():
    record = audit_record(google_flow(quota_project="billing-proj", retried=True))
    assert record["quota_project"] == "billing-proj" and record["retried"] is True


def test_record_of_an_upgraded_request_says_http():
    assert audit_record(google_flow(upgraded=True))["scheme"] == "http"


@pytest.mark.parametrize(("path", "location", "fingerprinted"), [
    ("/download/storage/v1/b/b/o/x?alt=media", "", False),
    ("/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=ID1", "", True),
    ("/upload/storage/v1/b/b/o?uploadType=resumable", "https://storage.googleapis.com/x?upload_id=ID1", True),
])
def test_upload_session_ids_are_fingerprinted(path: str, location: str, fingerprinted: bool):
    f = google_flow(path)
    assert f.response is not None
    f.response.headers["x-guploader-uploadid"] = "ID1"
    if location:
        f.response.headers["location"] = location
    record = audit_record(f)
    if fingerprinted:
        assert record["upstream_request_id"].startswith("sha256:")
        assert "ID1" not in json.dumps(record)
    else:
        assert record["upstream_request_id"] == "ID1"


def test_body_bytes_counted_buffered_or_announced():
    f = google_flow()
    assert f.response is not None
    f.request.content = b"12345"
    assert body_bytes(f, "request") == 5
    f.response.stream = True
    audit_log.count_response_stream(f)
    counter = f.response.stream
    assert isinstance(counter, ByteCounter)
    assert counter(b"abc") == b"abc" and counter(b"") == b""  # passes chunks through unchanged
    assert body_bytes(f, "response") == 3
    f.request.raw_content = None  # switched to streaming midway: only the announced length is known
    f.request.headers["content-length"] = "2048"
    assert body_bytes(f, "request") == 2048
    del f.request.headers["content-length"]
    assert body_bytes(f, "request") is None


def test_a_request_not_streamed_by_mitmproxy_is_left_buffered():
    f = google_flow()
    f.request.stream = False
    audit_log.count_request_stream(f)
    assert f.request.stream is False  # a 401 replay needs the buffered body


def test_records_are_appended_one_line_each(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old": 1}\n')
    path.chmod(0o600)  # under umask 002 it would be group-writable, which is refused
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        for _ in range(3):
            addon.response(google_flow())
        addon.response(tflow.tflow(resp=True))  # not an injected host: not audited
    lines = path.read_text().splitlines()
    assert len(lines) == 4 and lines[0] == '{"old": 1}'
    assert all(json.loads(line)["host"] == "storage.googleapis.com" for line in lines[1:])


def test_a_new_log_is_private(tmp_path: Path):
    path = tmp_path / "new.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
    assert path.stat().st_mode & 0o777 == 0o600


def test_unopenable_log_is_a_configuration_error(tmp_path: Path):
    addon = AuditLog()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError, match="cannot open audit log"):
        tctx.configure(addon, audit_log=str(tmp_path / "missing" / "audit.jsonl"))


def test_write_failure_withholds_the_response_then_refuses_requests():
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log="/dev/full")
        done = google_flow()
        addon.response(done)
        assert done.response is not None and done.response.status_code == 503
        assert addon.broken
        streamed = google_flow()
        assert streamed.response is not None
        streamed.response.stream = True
        addon.response(streamed)
        assert streamed.error is not None and streamed.error.msg == "Connection killed."
        fresh = google_flow()
        fresh.response = None
        addon.requestheaders(fresh)
        assert fresh.response is not None and fresh.response.status_code == 503
        upload = google_flow()
        upload.response = None
        upload.request.stream = True
        addon.requestheaders(upload)
        assert upload.response is None and upload.error is not None  # killed: never goes upstream
        other = tflow.tflow()
        addon.requestheaders(other)
        assert other.response is None  # tunnelled and non-injected traffic is not ours to stop


def test_log_recovers_when_a_refused_requests_record_can_be_written(tmp_path: Path):
    addon = AuditLog()
    path = tmp_path / "audit.jsonl"
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        addon.broken = "No space left on device"  # as if the disk had been full
        refused = google_flow()
        refused.response = None
        addon.requestheaders(refused)
        assert refused.response is not None and refused.response.status_code == 503
        addon.response(refused)  # its record gets written: the disk has room again
        assert addon.broken is None
        assert json.loads(path.read_text())["status"] == 503


def test_reopen_follows_a_rotated_file(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        addon.response(google_flow())
        path.rename(tmp_path / "audit.jsonl.1")
        addon.reopen()
        addon.response(google_flow())
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "audit.jsonl.1").read_text().splitlines()) == 1


@pytest.mark.parametrize("name", ["audit_log.py", "metrics.py", "admin.py"])
def test_addon_loads_as_a_script(name: str):
    with taddons.context() as tctx:
        script = tctx.script(str(ROOT / "addons" / name))
        assert script.addons
