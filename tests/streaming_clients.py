"""Real clients for the streaming tests: httpx, requests and curl through the proxy, and what they saw."""

from __future__ import annotations

import itertools
import json
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import httpx
import requests

from tests.proxyproc import RunningProxy, base_env

AIPLATFORM = "https://us-central1-aiplatform.googleapis.com"
MODEL_PATH = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash"
SSE_URL = f"{AIPLATFORM}{MODEL_PATH}:streamGenerateContent?alt=sse"
SSE_BODY = {"contents": [{"role": "user", "parts": [{"text": "Count to five."}]}]}
WAIT_URL = f"{AIPLATFORM}/v1/projects/p/locations/us-central1/operations/op-1:wait"
UPLOAD_URL = f"{AIPLATFORM}/upload/v1/projects/p/locations/us-central1/ragCorpora/c1/ragFiles:upload"
WS_URL = "wss://us-central1-aiplatform.googleapis.com/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"


class Event(NamedTuple):
    """One server-sent event as a client got it: when, and what the server said about it."""

    arrived: float  # the client's clock (same machine as the fake)
    seq: int
    sent_at: float  # the fake's clock when it sent the event
    last: bool


def parse_event(line: str | bytes, arrived: float) -> Event | None:
    text = line.decode() if isinstance(line, bytes) else line
    if not text.startswith("data: "):
        return None
    fake = json.loads(text[len("data: "):])["fake"]
    return Event(arrived, fake["seq"], fake["sent_at"], fake["last"])


def assert_live(events: list[Event], count: int) -> None:
    """Every event reached the client before the server produced the next one."""
    assert [e.seq for e in events] == list(range(count)), events
    assert events[-1].last
    for event, following in itertools.pairwise(events):
        assert event.arrived < following.sent_at, (
            f"event {event.seq} arrived {event.arrived - event.sent_at:.3f} s after it was sent, only once "
            f"event {following.seq} had been produced ({event.arrived - following.sent_at:.3f} s later): held")


def ssl_context(proxy: RunningProxy) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(proxy.ca_cert))


def httpx_client(proxy: RunningProxy, *, http2: bool = False, **kwargs: Any) -> httpx.Client:
    """``http2``: offer h2 and http/1.1, as real clients do (the proxy answers with what upstream took)."""
    return httpx.Client(proxy=proxy.url, verify=ssl_context(proxy), http2=http2, trust_env=False, timeout=60,
                        **kwargs)


def requests_session(proxy: RunningProxy) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": proxy.url}
    s.verify = str(proxy.ca_cert)
    return s


def sse_with_httpx(client: httpx.Client, url: str, stop_after: int | None = None) -> tuple[int, list[Event], int, str]:
    """(status, events, body bytes, HTTP version); reads raw bytes so the count is exact."""
    events: list[Event] = []
    size = 0
    with client.stream("POST", url, json=SSE_BODY) as r:
        buffer = b""
        for chunk in r.iter_raw():
            now = time.time()
            size += len(chunk)
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n\r\n", 1)
                if (event := parse_event(line, now)) is not None:
                    events.append(event)
            if stop_after is not None and len(events) >= stop_after:
                break
        return r.status_code, events, size, r.http_version


def sse_with_requests(session: requests.Session, url: str) -> tuple[int, list[Event]]:
    events: list[Event] = []
    with session.post(url, json=SSE_BODY, stream=True, timeout=60) as r:
        for line in r.iter_lines(chunk_size=None):
            if (event := parse_event(line, time.time())) is not None:
                events.append(event)
        return r.status_code, events


def sse_with_curl(proxy: RunningProxy, url: str, *extra: str) -> tuple[int, list[Event]]:
    """curl -N (no output buffering), each line timed as it comes out of the pipe."""
    command = ["curl", "-sS", "-N", "--fail-with-body", "--proxy", proxy.url, "-X", "POST",
               "-H", "content-type: application/json", "--data", json.dumps(SSE_BODY), *extra, url]
    events: list[Event] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=base_env(CURL_CA_BUNDLE=str(proxy.ca_cert))) as curl:
        assert curl.stdout is not None
        for line in curl.stdout:
            if (event := parse_event(line.rstrip(b"\r\n"), time.time())) is not None:
                events.append(event)
        code = curl.wait(60)
    return code, events


def paced(parts: int, size: int, pause: float, sent: list[float]) -> Iterator[bytes]:
    """A request body produced part by part, ``pause`` apart (the client's own pacing)."""
    for i in range(parts):
        if i:
            time.sleep(pause)
        sent.append(time.time())
        yield b"u" * size


def received_by(chunks: Iterable[list[float]], total: int) -> float:
    """When the server had received ``total`` bytes, from its (bytes, time) reads."""
    have = 0
    for size, at in chunks:
        have += int(size)
        if have >= total:
            return at
    raise AssertionError(f"the server never received {total} bytes")
