"""Security review, issue 9: hostile bytes cannot make a request go unrecorded, and the audit log
path cannot be a planted symlink or somebody else's file."""

from __future__ import annotations

import http.client as httpclient
import json
import logging
import os
import signal
import socket
import ssl
import stat
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons

from addons.audit_log import AuditLog, encode_record, escape_text
from fakegoogle import FakeGoogle
from proxy import cli
from proxy.errors import ExitStatus
from tests.proxyproc import ProxyProcess
from tests.test_audit_addon import google_flow
from tests.test_audit_e2e import check_schema, session_via

NOBODY = 65534
UNSAFE = {"Cc", "Cs", "Zl", "Zp", "Cf"}  # what no decoded record value may contain


def assert_safe_line(line: bytes) -> dict[str, Any]:
    """One record per line for any reader: UTF-8, no raw controls, no line separators, JSON."""
    assert line.endswith(b"\n") and line.count(b"\n") == 1, line[:200]
    body = line[:-1]
    assert not [b for b in body if b < 0x20 or b == 0x7F], line[:200]
    text = body.decode("utf-8")  # strict: a lone surrogate or stray byte raises
    assert "\u2028" not in text and "\u2029" not in text and "\x85" not in text
    record = json.loads(text)
    for value in _strings(record):
        bad = {unicodedata.category(c) for c in value} & UNSAFE
        assert not bad, f"{bad} in {value[:80]!r}"
    return record


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    return []


# -- Finding 2: the record serialisation ----------------------------------------------------------

@pytest.mark.parametrize(("raw", "recorded"), [
    pytest.param("/storage/v1/b/b1/o?alt=json", "/storage/v1/b/b1/o?alt=json", id="ordinary"),
    pytest.param("billing-ünïcødé", "billing-ünïcødé", id="printable-non-ascii-kept"),
    pytest.param("a\udcffz", "a\\xffz", id="surrogateescape-0xff"),
    pytest.param(b"\x80\xc3(".decode("utf-8", "surrogateescape"), "\\x80\\xc3(", id="surrogateescape-bad-utf8"),
    pytest.param("\ud800", "\\ud800", id="lone-high-surrogate"),
    pytest.param("\udfff", "\\udfff", id="lone-low-surrogate"),
    pytest.param("a\x00b", "a\\u0000b", id="nul"),
    pytest.param("a\nb\rc", "a\\u000ab\\u000dc", id="cr-lf"),
    pytest.param("\t\x0b\x0c", "\\u0009\\u000b\\u000c", id="tab-vt-ff"),
    pytest.param("\x1b[31mred", "\\u001b[31mred", id="terminal-escape"),
    pytest.param("\x1c\x1d\x1e\x1f", "\\u001c\\u001d\\u001e\\u001f", id="str-splitlines-separators"),
    pytest.param("\x7f", "\\u007f", id="del"),
    pytest.param("a\u2028b\u2029c", "a\\u2028b\\u2029c", id="line-paragraph-separators"),
    pytest.param("\u202eexe.txt", "\\u202eexe.txt", id="bidi-override"),
    pytest.param("\ufeff\u200b", "\\ufeff\\u200b", id="bom-zero-width"),
    pytest.param("\U000e0001", "\\U000e0001", id="format-beyond-bmp"),
    pytest.param(bytes(range(0x80, 0xA0)).decode("latin-1"),
                 "".join(f"\\u{c:04x}" for c in range(0x80, 0xA0)), id="latin1-c1-controls-incl-nel"),
    pytest.param("caf\xe9 \xa0\xff", "caf\xe9 \xa0\xff", id="latin1-printable-kept"),
    pytest.param("\xad", "\\u00ad", id="latin1-soft-hyphen"),
])
def test_hostile_text_is_recorded_as_visible_escapes(raw: str, recorded: str):
    assert escape_text(raw) == recorded
    record = assert_safe_line(encode_record({"path": raw, "quota_project": raw, "status": 200}))
    assert record == {"path": recorded, "quota_project": recorded, "status": 200}


@pytest.mark.parametrize("decoding", ["surrogateescape", "latin-1"])
def test_every_byte_value_makes_a_safe_line(decoding: str):
    errors = "surrogateescape" if decoding == "surrogateescape" else "strict"
    codec = "utf-8" if decoding == "surrogateescape" else "latin-1"
    for byte in range(256):
        value = b"a" + bytes([byte]) + b"z"
        assert_safe_line(encode_record({"quota_project": value.decode(codec, errors)}))


def test_every_code_point_makes_a_safe_line():
    every = "".join(map(chr, range(0x110000)))
    record = assert_safe_line(encode_record({"path": every}))
    assert record["path"].startswith("\\u0000\\u0001") and "\\ud800" in record["path"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object()])
def test_a_record_json_cannot_carry_is_refused(value: Any):
    with pytest.raises((ValueError, TypeError)):
        encode_record({"duration_ms": value})


def test_non_utf8_quota_project_is_recorded_and_the_response_delivered(tmp_path: Path):
    """The original finding: byte 0xff in x-goog-user-project passed unrecorded."""
    path = tmp_path / "audit.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        flow = google_flow()
        flow.request.headers[b"x-goog-user-project"] = b"proj\xff\x00\xe2\x80\xa8"
        flow.metadata["gauth"]["quota_project"] = flow.request.headers["x-goog-user-project"]
        addon.response(flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert addon.broken is None
    record = assert_safe_line(path.read_bytes())
    check_schema(record)
    assert record["quota_project"] == "proj\\xff\\u0000\\u2028"


def test_a_record_that_cannot_be_built_withholds_the_response(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        flow = google_flow()
        flow.request.timestamp_start = float("nan")  # no time can be written for it
        addon.response(flow)
        assert flow.response is not None and flow.response.status_code == 503
        assert addon.broken is not None and "could not be encoded" in addon.broken
        fresh = google_flow()
        fresh.response = None
        addon.requestheaders(fresh)
        assert fresh.response is not None and fresh.response.status_code == 503
    assert path.read_bytes() == b""  # nothing half-written


# -- Finding 2: every byte through the real proxy --------------------------------------------------

HOST = "storage.googleapis.com"


def open_tunnel(pp: ProxyProcess) -> ssl.SSLSocket:
    """CONNECT to storage.googleapis.com:443 through the proxy, then TLS trusting its CA."""
    raw = socket.create_connection((pp.host, pp.port), timeout=20)
    raw.sendall(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the TLS stream is consumed
        chunk = raw.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    context = ssl.create_default_context(cafile=str(pp.ca_cert))
    return context.wrap_socket(raw, server_hostname=HOST)


def hostile_request(where: str, byte: int) -> tuple[str, bytes]:
    """A GET carrying ``byte`` in the path, the query or x-goog-user-project (the one request
    header a record holds); its id leads the path, which survives any byte after it."""
    rid = f"{where}{byte:02x}"
    value = b"a" + bytes([byte]) + b"z"
    target = {"path": b"/t%s/%s" % (rid.encode(), value),
              "query": b"/t%s/o?q=%s" % (rid.encode(), value)}.get(where, b"/t%s/o" % rid.encode())
    headers = b"Host: " + HOST.encode() + b"\r\n"
    if where == "header":
        headers += b"x-goog-user-project: " + value + b"\r\n"
    return rid, b"GET " + target + b" HTTP/1.1\r\n" + headers + b"\r\n"


def request_id(path: str) -> str:
    return path.split("/")[1].removeprefix("t")


def send_all(pp: ProxyProcess, requests: list[tuple[str, bytes]]) -> dict[str, httpclient.HTTPResponse]:
    """One request at a time over keep-alive tunnels; a new tunnel only when one was closed."""
    answers: dict[str, httpclient.HTTPResponse] = {}
    sock: ssl.SSLSocket | None = None
    for rid, raw in requests:
        sock = sock or open_tunnel(pp)
        sock.sendall(raw)
        response = httpclient.HTTPResponse(sock, method="GET")
        response.begin()
        response.read()
        answers[rid] = response
        if response.will_close:
            sock.close()
            sock = None
    if sock is not None:
        sock.close()
    return answers


def test_every_byte_value_is_audited_or_refused(proxy_factory: Any, fake: FakeGoogle, tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit))
    pp.wait_for_line("token available")
    answers = send_all(pp, [hostile_request(where, byte)
                            for where in ("path", "query", "header") for byte in range(256)])

    # Upstream (hypercorn) answers carry a Date header; the proxy's own refusals do not.
    upstream = {rid for rid, r in answers.items() if r.getheader("date")}
    refused = set(answers) - upstream
    assert len(upstream) > 700, sorted(refused)  # most bytes do go through: this tests the log
    for rid in refused:  # what mitmproxy's parser rejects never becomes a flow, so never goes upstream
        assert answers[rid].status == 400, (rid, answers[rid].status)
    assert not [q for q in fake.requests if request_id(q.path) in refused]

    # The response hook writes the record before the response goes out: all lines are there.
    lines = audit.read_bytes().splitlines(keepends=True)
    records = [assert_safe_line(line) for line in lines]
    ids = [request_id(r["path"]) for r in records]
    assert sorted(ids) == sorted(upstream), set(ids) ^ upstream  # exactly one line per upstream answer
    for record in records:
        check_schema(record)
        assert record["auth"] == "injected" and record["status"] == answers[request_id(record["path"])].status
    quota = {request_id(r["path"]): r["quota_project"] for r in records if "quota_project" in r}
    assert quota["header80"] == "a\\x80z" and quota["headerff"] == "a\\xffz"
    assert quota["header00"] == "a\\u0000z" and quota["header7f"] == "a\\u007fz"

    normal = session_via(pp).get(f"https://{HOST}/echo", timeout=20)
    assert normal.status_code == 200 and normal.json()["token_valid"] is True
    assert json.loads(audit.read_bytes().splitlines()[-1])["path"] == "/echo"
    assert "Addon error" not in pp.text() and "Traceback" not in pp.text()


# -- Finding 3: the audit log path -----------------------------------------------------------------

def configure_error(path: Path) -> str:
    addon = AuditLog()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError) as info:
        tctx.configure(addon, audit_log=str(path))
    return str(info.value)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file the proxy must never append to (root's shell rc in the report)."""
    path = tmp_path / "bashrc"
    path.write_text("# rc\n")
    return path


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_is_refused_not_followed(tmp_path: Path, victim: Path, dangling: bool):
    target = tmp_path / "not-there" if dangling else victim
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    assert configure_error(link) == f"refusing audit log {link}: it is a symbolic link"
    assert victim.read_text() == "# rc\n" and not (tmp_path / "not-there").exists()


def test_file_of_another_user_is_refused(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)
    assert configure_error(path) == (f"refusing audit log {path}: it is owned by uid {NOBODY}, "
                                     f"not by the proxy's user (uid {os.geteuid()})")
    assert path.read_text() == ""


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_file_writable_by_group_or_others_is_refused(tmp_path: Path, mode: int):
    path = tmp_path / "audit.jsonl"
    path.write_text("")
    path.chmod(mode)
    assert configure_error(path) == f"refusing audit log {path}: it is writable by group or others (mode {mode:04o})"


def test_hard_link_to_another_file_is_refused(tmp_path: Path, victim: Path):
    path = tmp_path / "audit.jsonl"
    victim.chmod(0o600)
    os.link(victim, path)
    assert configure_error(path) == f"refusing audit log {path}: it has 2 hard links"
    assert victim.read_text() == "# rc\n"


def test_planted_fifo_neither_hangs_nor_is_written(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    os.mkfifo(path, 0o600)
    assert configure_error(path).startswith(f"cannot open audit log {path}:")  # no reader: no hang
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert configure_error(path) == f"refusing audit log {path}: it is not a regular file"
    finally:
        os.close(reader)


def test_own_private_file_and_device_nodes_are_accepted(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old": 1}\n')
    path.chmod(0o600)
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        addon.response(google_flow())
        tctx.configure(addon, audit_log="/dev/null")  # root's device node, mode 0666: fine
        addon.response(google_flow())
        assert addon.broken is None
    assert len(path.read_text().splitlines()) == 2


def test_a_new_log_is_created_exclusively_and_private(tmp_path: Path):
    path = tmp_path / "new.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid() and st.st_nlink == 1


def test_refused_reopen_keeps_traffic_closed_with_one_line(tmp_path: Path, victim: Path,
                                                           caplog: pytest.LogCaptureFixture):
    path = tmp_path / "audit.jsonl"
    addon = AuditLog()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, audit_log=str(path))
        path.rename(tmp_path / "audit.jsonl.1")
        path.symlink_to(victim)  # planted between logrotate's rename and the SIGHUP
        with caplog.at_level(logging.WARNING, logger="addons.audit_log"):
            assert addon.reopen() is False
        expected = (f"audit log {path} not reopened: it is a symbolic link; "
                    "refusing requests to Google until a SIGHUP reopens it")
        assert [r.getMessage() for r in caplog.records] == [expected]
        flow = google_flow()
        flow.response = None
        addon.requestheaders(flow)
        assert flow.response is not None and flow.response.status_code == 503
        assert "symbolic link" in flow.response.text
        addon.response(flow)  # its record cannot be written anywhere: nothing follows the link
        assert victim.read_text() == "# rc\n"
        path.unlink()
        assert addon.reopen() is True and addon.broken is None
        addon.response(google_flow())
    assert len(path.read_text().splitlines()) == 1


def test_sighup_onto_a_planted_symlink_refuses_traffic_and_keeps_running(
        proxy_process_factory: Any, fake: FakeGoogle, tmp_path: Path, victim: Path):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_process_factory("--audit-log", str(audit))  # a process: it takes a signal
    pp.wait_for_line("token available")
    s = session_via(pp)
    assert s.get(f"https://{HOST}/echo?n=1", timeout=20).status_code == 200
    audit.rename(tmp_path / "audit.jsonl.1")
    audit.symlink_to(victim)
    pp.proc.send_signal(signal.SIGHUP)
    pp.wait_for_line("not reopened: it is a symbolic link")
    fake.clear_requests()
    refused = s.get(f"https://{HOST}/echo?n=2", timeout=20)
    assert refused.status_code == 503 and "symbolic link" in refused.json()["error"]["message"]
    assert fake.requests == [] and victim.read_text() == "# rc\n"
    audit.unlink()
    pp.proc.send_signal(signal.SIGHUP)
    pp.wait_for_line("writable again")
    assert s.get(f"https://{HOST}/echo?n=3", timeout=20).status_code == 200
    assert [json.loads(line)["path"] for line in audit.read_text().splitlines()] == ["/echo?n=3"]
    assert pp.proc.poll() is None and pp.text().count("not reopened") == 1


@pytest.mark.parametrize("plant", ["symlink", "other-owner", "group-writable"])
def test_cli_refuses_a_planted_audit_log_with_exit_64(tmp_path: Path, victim: Path, plant: str,
                                                     capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "audit.jsonl"
    if plant == "symlink":
        path.symlink_to(victim)
    else:
        path.write_text("")
        path.chmod(0o660 if plant == "group-writable" else 0o600)
        if plant == "other-owner":
            os.chown(path, NOBODY, NOBODY)
    code = cli.main(["serve", "--listen", "127.0.0.1:0", "--confdir", str(tmp_path / "conf"),
                     "--audit-log", str(path)])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE == 64, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"gcp-auth-proxy: invalid configuration: refusing audit log {path}: it "), err
    assert victim.read_text() == "# rc\n"


def test_stdout_audit_log_still_works(proxy_process_factory: Any):
    pp = proxy_process_factory("--audit-log", "-")  # a process: its stdout is the point
    pp.wait_for_line("token available")
    assert session_via(pp).get(f"https://{HOST}/echo?x=%FF", timeout=20).status_code == 200
    line = pp.wait_for_line('"path":"/echo?x=%FF"')
    check_schema(json.loads(line[line.index("{"):]))
