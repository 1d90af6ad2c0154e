"""Bodies stream through the proxy as they arrive: server-sent events, long polls, uploads, the held exception."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from addons.audit_log import AuditedResponse
from addons.google_auth import answers_with_a_stream
from addons.streaming import (
    HOLD_MAX,
    REPLAY_PENDING,
    Streaming,
    should_hold_request,
    should_stream_response,
)
from fakegoogle import FakeGoogle
from tests.audit_records import wait_for_records
from tests.conftest import ProxyFactory
from tests.proxyproc import RunningProxy
from tests.streaming_clients import (
    AIPLATFORM,
    SSE_URL,
    UPLOAD_URL,
    WAIT_URL,
    assert_live,
    httpx_client,
    paced,
    received_by,
    requests_session,
    sse_with_curl,
    sse_with_httpx,
    sse_with_requests,
)

# -- the decision (pure) -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "headers", "http2", "replayable", "hold"), [
    ("GET", {}, False, True, True),  # HTTP/1 without a length has no body
    ("GET", {}, True, True, True),  # HTTP/2 GET: assumed bodiless
    ("POST", {}, False, True, True),  # HTTP/1 POST without a length: no body either
    ("POST", {}, True, True, False),  # HTTP/2 POST without a length: a body of unknown length
    ("PUT", {}, True, False, False),
    ("POST", {"content-length": "0"}, True, False, True),
    ("POST", {"content-length": "1000"}, False, True, True),  # small, known: held for the replay
    ("POST", {"content-length": str(HOLD_MAX)}, False, True, True),
    ("POST", {"content-length": str(HOLD_MAX + 1)}, False, True, False),
    ("POST", {"content-length": "1000"}, False, False, False),  # no token of ours: nothing to replay
    ("POST", {"content-length": " 10 "}, False, True, True),
    ("POST", {"content-length": "1e3"}, False, True, False),  # never hold on a guess
    ("POST", {"content-length": "²"}, False, True, False),
    ("POST", {"transfer-encoding": "chunked"}, False, True, False),
    ("POST", {"content-length": "10", "content-type": "application/grpc"}, True, True, False),
    ("POST", {"content-length": "10", "content-type": "Application/GRPC+proto"}, True, True, False),
    ("POST", {"content-length": "10", "expect": "100-continue"}, False, True, False),
    ("POST", {"content-length": "10", "expect": "100-Continue "}, False, True, False),
    ("GET", {"content-type": "application/grpc-web"}, True, True, False),
])
def test_should_hold_request(method, headers, http2, replayable, hold):
    fields = [(k.encode(), v.encode()) for k, v in headers.items()]
    assert should_hold_request(method, http.Headers(fields), http2=http2, replayable=replayable) is hold


@pytest.mark.parametrize(("status", "pending", "stream"), [
    (200, False, True), (401, False, True), (401, True, False), (101, False, False), (500, False, True),
])
def test_should_stream_response(status, pending, stream):
    assert should_stream_response(status, pending) is stream


@pytest.mark.parametrize(("url", "headers", "stream"), [
    ("https://x.googleapis.com/v1/m:streamGenerateContent?alt=sse", {}, True),
    ("https://x.googleapis.com/v1/m:generateContent", {"accept": "text/event-stream"}, True),
    ("https://x.googleapis.com/ws", {"upgrade": "websocket"}, True),
    ("https://x.googleapis.com/p.S/M", {"content-type": "application/grpc"}, True),
    ("https://x.googleapis.com/v1/m:generateContent", {"accept": "application/json"}, False),
    ("https://x.googleapis.com/v1/m?alt=json", {}, False),
])
def test_answers_with_a_stream(url, headers, stream):
    assert answers_with_a_stream(http.Request.make("POST", url, b"", headers)) is stream


def test_streaming_addon_streams_all_but_the_held_request_and_the_kept_401():
    addon = Streaming()
    with taddons.context(addon):
        held = tflow.tflow()
        held.request.headers["content-length"] = "5"
        held.metadata["gauth"] = {"auth": "injected"}
        addon.requestheaders(held)
        assert not held.request.stream
        sent = tflow.tflow()
        sent.request.headers["transfer-encoding"] = "chunked"
        addon.requestheaders(sent)
        assert sent.request.stream is True
        answered = tflow.tflow(resp=True)  # a response set early: streaming would make mitmproxy raise
        answered.request.headers["transfer-encoding"] = "chunked"
        addon.requestheaders(answered)
        assert not answered.request.stream

        streamed = tflow.tflow(resp=True)
        addon.responseheaders(streamed)
        assert streamed.response.stream is True
        kept = tflow.tflow(resp=True)
        kept.response.status_code = 401
        kept.metadata["gauth"] = {REPLAY_PENDING: True}
        addon.responseheaders(kept)
        assert not kept.response.stream


@pytest.mark.parametrize("written", [True, False])
def test_audited_response_keeps_the_last_byte_until_the_record_is_written(written):
    """Framed by Content-Length, a body is complete at its last byte: that byte waits for the record."""
    flow = tflow.tflow(resp=True)
    flow.response.headers["content-length"] = "10"
    records_written: list[http.HTTPFlow] = []

    def write(f: http.HTTPFlow) -> bool:
        records_written.append(f)
        return written

    stream = AuditedResponse(write, flow)
    assert stream(b"12345") == b"12345" and stream(b"67890") == b"6789"
    assert records_written == [] and stream.recorded is None
    assert stream(b"") == (b"0" if written else b"")  # the end of the body: the record first
    assert records_written == [flow] and stream.recorded is written and stream.count == 10


def test_audited_response_without_a_length_passes_every_byte_at_once():
    flow = tflow.tflow(resp=True)
    del flow.response.headers["content-length"]
    stream = AuditedResponse(lambda f: True, flow)
    assert stream(b"data: 1\r\n\r\n") == b"data: 1\r\n\r\n" and stream(b"") == b""


def test_script_loads_the_streaming_addon():
    with taddons.context() as tctx:
        script = tctx.script(str(Path(__file__).parent.parent / "addons" / "streaming.py"))
        assert [type(a).__name__ for a in script.addons] == ["Streaming"]


# -- server-sent events through the proxy ------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_sse_events_reach_httpx_while_the_next_is_produced(proxy: RunningProxy, fake: FakeGoogle, http2):
    with httpx_client(proxy, http2=http2) as client:
        status, events, _, version = sse_with_httpx(client, SSE_URL + "&events=5")
    assert status == 200 and version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert_live(events, 5)
    sse = [r for r in fake.requests if ":streamGenerateContent" in r.path]
    assert len(sse) == 1 and sse[0].token_valid  # the token was injected, and checked


def test_sse_events_reach_requests_stream_true_while_the_next_is_produced(proxy: RunningProxy):
    status, events = sse_with_requests(requests_session(proxy), SSE_URL + "&events=5")
    assert status == 200
    assert_live(events, 5)


@pytest.mark.parametrize("version", ["--http1.1", "--http2"])
def test_sse_events_reach_curl_n_while_the_next_is_produced(proxy: RunningProxy, version):
    code, events = sse_with_curl(proxy, SSE_URL + "&events=5", version)
    assert code == 0
    assert_live(events, 5)


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
def test_sse_gets_one_audit_record_at_its_end_with_exact_bytes(proxy_factory: ProxyFactory, tmp_path: Path, http2):
    audit = tmp_path / "audit.jsonl"
    pp = proxy_factory("--audit-log", str(audit))
    pp.wait_for_line("token available")
    with httpx_client(pp, http2=http2) as client:
        status, events, size, _ = sse_with_httpx(client, SSE_URL + "&events=4&pad=3000")
    assert status == 200 and len(events) == 4
    (record,) = wait_for_records(audit, 1)
    assert record["status"] == 200 and record["auth"] == "injected" and "error" not in record
    assert record["http_version"] == ("HTTP/2.0" if http2 else "HTTP/1.1")
    assert record["response_bytes"] == size  # counted chunk by chunk, exact over HTTP/2 too
    assert record["duration_ms"] >= (events[-1].sent_at - events[0].sent_at) * 1000  # the whole stream


# -- long polls and timeouts ---------------------------------------------------------------------------


def test_long_poll_of_20_s_is_not_cut_by_any_proxy_timeout(proxy: RunningProxy):
    """Only --read-timeout (300 s by default) bounds the wait for an answer's head."""
    started = time.monotonic()
    r = requests_session(proxy).post(WAIT_URL + "?timeout=20s", timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["done"] is True and r.json()["fake"]["waited_s"] >= 20
    assert time.monotonic() - started >= 20


def test_http2_client_gets_the_same_json_504_as_http1_on_a_read_timeout(proxy_factory: ProxyFactory,
                                                                        fake: FakeGoogle):
    pp = proxy_factory("--read-timeout", "1")
    pp.wait_for_line("token available")
    answers = {}
    for http2 in (False, True):
        with httpx_client(pp, http2=http2) as client:
            r = client.post(WAIT_URL + "?timeout=30s")  # no body over HTTP/2: a streamed POST
        assert r.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
        assert r.status_code == 504 and r.headers["content-type"].startswith("application/json"), r.text
        answers[http2] = r.json()["error"]
    assert answers[True] == answers[False]
    assert answers[True]["status"] == "DEADLINE_EXCEEDED" and "no answer within 1 s" in answers[True]["message"]
    # Both upstream connections were closed: the fake ended both long polls at once, not 30 s later.
    assert len(fake.wait_for_requests(WAIT_URL.removeprefix(AIPLATFORM), count=2)) == 2


# -- request bodies ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1-chunked", "http2"])
def test_request_body_reaches_the_server_while_the_client_still_produces_it(proxy: RunningProxy, http2):
    sent: list[float] = []
    with httpx_client(proxy, http2=http2) as client:
        r = client.post(UPLOAD_URL, content=paced(4, 1000, 0.3, sent))
    assert r.status_code == 200, r.text
    chunks = r.json()["fake"]["chunks"]
    assert sum(size for size, _ in chunks) == 4000
    for part, next_sent in enumerate(sent[1:], start=1):
        assert received_by(chunks, part * 1000) < next_sent, f"part {part} was held until the next was produced"


def test_small_post_after_401_is_held_and_replayed(proxy: RunningProxy, fake: FakeGoogle):
    fake.revoke_all()
    r = requests_session(proxy).post(UPLOAD_URL, data=b"v" * 2000, timeout=30)
    assert r.status_code == 200 and r.json()["fake"]["bytes"] == 2000
    uploads = [q for q in fake.requests if ":upload" in q.path]
    assert [q.token_valid for q in uploads] == [False, True]


def test_large_post_after_401_streams_and_the_client_retries_with_the_fresh_token(proxy: RunningProxy,
                                                                                   fake: FakeGoogle):
    fake.revoke_all()
    s = requests_session(proxy)
    body = b"w" * (HOLD_MAX + 1)
    assert s.post(UPLOAD_URL, data=body, timeout=30).status_code == 401  # streamed: nothing held to replay
    r = s.post(UPLOAD_URL, data=body, timeout=30)
    assert r.status_code == 200 and r.json()["fake"]["bytes"] == len(body)


def test_sse_after_401_is_not_replayed_and_the_next_one_streams(proxy: RunningProxy, fake: FakeGoogle):
    """Replaying would hold the whole event stream: the client gets the 401, the token is refreshed."""
    fake.revoke_all()
    with httpx_client(proxy) as client:
        status, events, _, _ = sse_with_httpx(client, SSE_URL + "&events=3")
        assert status == 401 and events == []
        assert len([q for q in fake.requests if ":streamGenerateContent" in q.path]) == 1  # not replayed
        status, events, _, _ = sse_with_httpx(client, SSE_URL + "&events=3")
    assert status == 200
    assert_live(events, 3)
