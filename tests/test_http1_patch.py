"""addons/http1_patch.py: what it wraps in mitmproxy's HTTP/1 and HTTP/2 servers, once, per master, 12.x only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from mitmproxy import connection, options
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import ErrorCode, _http1, _http2
from mitmproxy.proxy.layers.http._events import ResponseProtocolError
from mitmproxy.test import taddons, tflow

from addons import http1_patch
from addons.limits import Limits

ROOT = Path(__file__).resolve().parent.parent
WRAPPED: tuple[tuple[object, str], ...] = (
    (_http1.Http1Server, "send"), (_http1.Http1Server, "read_headers"), (_http1, "make_error_response"),
    (_http2.Http2Server, "_handle_event"),
)


def _current() -> list[object]:
    return [getattr(owner, name) for owner, name in WRAPPED]


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """As if install() had never run in this process; the wrapped functions are restored afterwards."""
    for owner, name in WRAPPED:
        monkeypatch.setattr(owner, name, getattr(owner, name))
    monkeypatch.setattr(http1_patch, "_installed", None)
    return _current()


@pytest.fixture
def patched() -> None:
    assert http1_patch.install()


def server_layer(opts: options.Options) -> tuple[_http1.Http1Server, connection.Client]:
    client = tflow.tclient_conn()
    layer = _http1.Http1Server(Context(client, opts))
    assert list(layer.handle_event(events.Start())) == []
    return layer, client


def with_head_limit(limit: int | None) -> options.Options:
    opts = options.Options()
    if limit is not None:
        opts.add_option(http1_patch.HEAD_LIMIT_OPTION, int, limit, "as Limits declares it")
    return opts


@pytest.mark.parametrize("version,expected", [
    ("12.0.0", True), ("12.3.1", True), ("12.4.0.dev0", True),
    ("11.1.3", False), ("13.0.0", False), ("1.0", False), ("", False), ("dev", False),
])
def test_only_mitmproxy_12_is_supported(version: str, expected: bool):
    assert http1_patch.supported(version) is expected


def test_install_wraps_each_function_once(fresh: list[object]):
    assert http1_patch.install() is True
    assert http1_patch.install() is True
    after = _current()
    for before, now in zip(fresh, after, strict=True):
        assert now is not before
        assert now.__wrapped__ is before  # type: ignore[attr-defined]  # wrapped once, not twice


def test_other_mitmproxy_versions_are_left_alone_with_one_warning(fresh: list[object], monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr(http1_patch.version, "VERSION", "13.0.0")
    with caplog.at_level(logging.WARNING, logger="addons.http1_patch"):
        assert http1_patch.install() is False
        assert http1_patch.install() is False
    assert _current() == fresh
    warnings = [r.getMessage() for r in caplog.records if r.name == "addons.http1_patch"]
    assert len(warnings) == 1
    assert "13.0.0" in warnings[0] and "size cap" in warnings[0] and "JSON error pages" in warnings[0]


def test_limits_addon_never_patches_mitmproxy(fresh: list[object]):
    """`mitmdump -s addons/limits.py` must not change mitmproxy for the whole process."""
    addon = Limits()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, **{http1_patch.HEAD_LIMIT_OPTION: 100})
        tctx.script(str(ROOT / "addons" / "limits.py"))
    assert _current() == fresh
    assert http1_patch._installed is None


def test_the_head_limit_is_the_option_limits_declares():
    """A renamed option must not quietly turn the cap off."""
    addon = Limits()
    with taddons.context(addon) as tctx:
        assert http1_patch.HEAD_LIMIT_OPTION in tctx.options
        tctx.configure(addon, **{http1_patch.HEAD_LIMIT_OPTION: 1234})
        assert http1_patch.head_limit(tctx.options) == 1234 == addon.max_header_size


@pytest.mark.usefixtures("patched")
def test_head_limit_is_each_connections_own():
    """Two masters' options, one process: each connection is capped by the options it came with."""
    head = b"GET http://www.example.test/ HTTP/1.1\r\nX-Big: " + b"a" * 500
    small, client = server_layer(with_head_limit(100))
    out = list(small.handle_event(events.DataReceived(client, head)))
    assert isinstance(out[0], commands.SendData) and out[0].data.startswith(b"HTTP/1.1 431")
    assert b"exceeds 100 bytes" in out[0].data
    assert isinstance(out[1], commands.CloseConnection)
    for limit in (1000, 0, None):  # larger; 0: no cap; no option (mitmdump without Limits): no cap
        layer, client = server_layer(with_head_limit(limit))
        assert list(layer.handle_event(events.DataReceived(client, head))) == [], limit


@pytest.mark.usefixtures("patched")
def test_body_bytes_behind_a_small_head_are_not_counted():
    layer, client = server_layer(with_head_limit(100))
    data = b"POST http://www.example.test/ HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 500\r\n\r\n" + b"b" * 500
    out = list(layer.handle_event(events.DataReceived(client, data)))
    assert out and not any(isinstance(c, commands.SendData) for c in out)


@pytest.mark.usefixtures("patched")
def test_timed_out_upstream_message_belongs_to_its_own_connection():
    opts = with_head_limit(None)
    request = b"GET http://silent.example.test/ HTTP/1.1\r\nHost: silent.example.test\r\n\r\n"
    layers = []
    for _ in range(2):
        layer, client = server_layer(opts)
        list(layer.handle_event(events.DataReceived(client, request)))
        layers.append((layer, client))
    (timed_out, client), (other, _) = layers
    http1_patch.note_upstream_timeout(client, "gcp-auth-proxy: silent.example.test timed out: no answer within 1 s")

    def error_page(layer: _http1.Http1Server) -> bytes:
        out = list(layer.handle_event(ResponseProtocolError(1, "server closed connection",
                                                            ErrorCode.GENERIC_SERVER_ERROR)))
        assert isinstance(out[0], commands.SendData)
        return out[0].data

    page = error_page(other)
    assert page.startswith(b"HTTP/1.1 502") and b"server closed connection" in page
    assert b"application/json" in page and b"mitmproxy" not in page.lower()
    page = error_page(timed_out)
    assert page.startswith(b"HTTP/1.1 504") and b"no answer within 1 s" in page


def test_forget_drops_the_note():
    client = tflow.tclient_conn()
    http1_patch.note_upstream_timeout(client, "timed out")
    http1_patch.forget(client)
    assert client not in http1_patch._timed_out
