"""The one retry after a 401: bounded, and only to the destination the first attempt was checked for."""

from __future__ import annotations

import pytest

from fakegoogle import FakeGoogle
from tests.proxyproc import ProxyProcess
from tests.test_host_confusion import client_context, h2_get, open_tunnel, read_all, status
from tests.test_proxy_e2e import session_via

UPLOAD = "https://storage.googleapis.com/upload/storage/v1/b/demo-bucket/o?uploadType=media&name={name}"
DOWNLOAD = "https://storage.googleapis.com/download/storage/v1/b/demo-bucket/o/{name}?alt=media"


def test_small_answer_is_replayed_with_a_fresh_token(proxy: ProxyProcess, fake: FakeGoogle):
    s = session_via(proxy)
    s.post(UPLOAD.format(name="small"), data=b"x" * 1000, timeout=30).raise_for_status()
    fake.revoke_all()
    r = s.get(DOWNLOAD.format(name="small"), timeout=30)
    assert r.status_code == 200 and r.content == b"x" * 1000


def test_large_answer_after_401_is_not_buffered_and_the_next_request_works(proxy: ProxyProcess,
                                                                          fake: FakeGoogle):
    """A replayed answer above 1 MiB is given up: the client gets the 401, the token is fresh."""
    s = session_via(proxy)
    body = b"y" * (3 * 1024 * 1024)
    s.post(UPLOAD.format(name="big"), data=body, timeout=30).raise_for_status()
    fake.revoke_all()
    before = fake.token_fetches
    first = s.get(DOWNLOAD.format(name="big"), timeout=30)
    assert first.status_code == 401
    second = s.get(DOWNLOAD.format(name="big"), timeout=30)
    assert second.status_code == 200 and second.content == body
    assert fake.token_fetches - before == 1
    assert "retry after 401 not buffered" in proxy.text()


@pytest.mark.parametrize("path", ["@www.example.test/echo", "//www.example.test/echo"])
def test_replay_never_follows_an_authority_smuggled_in_the_path(proxy: ProxyProcess, fake: FakeGoogle, path):
    """HTTP/2 lets a client send any ``:path``; a replay built from it must not reach another host."""
    fake.revoke_all()
    _status, answer = h2_get(proxy, open_tunnel(proxy, "storage.googleapis.com:443", None),
                             "storage.googleapis.com", path)
    assert not [r for r in fake.requests if r.server == "other"], "the replay reached another host"
    assert not any(t in answer.decode("latin-1") for t in fake.issued_tokens)
    assert proxy.proc.poll() is None


def test_http1_request_after_revocation_in_a_tunnel_still_works(proxy: ProxyProcess, fake: FakeGoogle):
    fake.revoke_all()
    sock = open_tunnel(proxy, "storage.googleapis.com:443", None)
    with client_context(proxy, ["http/1.1"]).wrap_socket(sock, server_hostname="storage.googleapis.com") as tls:
        tls.sendall(b"GET /storage/v1/b/demo-bucket HTTP/1.1\r\nHost: storage.googleapis.com\r\n"
                    b"Connection: close\r\n\r\n")
        answer = read_all(tls)
    assert status(answer) == 200
