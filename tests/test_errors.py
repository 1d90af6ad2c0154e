"""The proxy's own refusals: Google-style JSON for HTTP clients, a gRPC status for gRPC calls."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tutils

from addons.errors import GRPC_CODES, error_response, grpc_code

MESSAGE = "gcp-auth-proxy could not get a Google access token for this request: invalid_grant."


def request(content_type: str | None) -> http.Request:
    req = tutils.treq(host="pubsub.googleapis.com", path="/google.pubsub.v1.Publisher/Publish")
    if content_type is not None:
        req.headers["content-type"] = content_type
    return req


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_http_clients_get_google_style_json(content_type: str | None):
    response = error_response(502, MESSAGE, "invalid_grant", request=request(content_type))
    assert response.status_code == 502 and response.headers["content-type"].startswith("application/json")
    error = json.loads(response.content)["error"]
    assert error == {"code": 502, "status": "UNAVAILABLE", "message": MESSAGE,
                     "errors": [{"reason": "invalid_grant", "domain": "gcp-auth-proxy", "message": MESSAGE}]}


@pytest.mark.parametrize("content_type", ["application/grpc", "application/grpc+proto", "Application/GRPC"])
@pytest.mark.parametrize(("status", "code"), [(400, 3), (401, 16), (403, 7), (421, 9), (429, 8), (502, 14),
                                              (503, 14), (504, 4), (500, 2)])
def test_grpc_calls_get_a_trailers_only_status(content_type: str, status: int, code: int):
    response = error_response(status, MESSAGE, "why", request=request(content_type))
    assert response.status_code == 200 and response.content == b""  # headers with END_STREAM: trailers-only
    assert response.headers["content-type"] == "application/grpc"
    assert response.headers["grpc-status"] == str(code) == str(grpc_code(status))
    assert unquote(response.headers["grpc-message"]) == MESSAGE


def test_without_a_request_the_answer_is_json():
    assert error_response(403, MESSAGE).headers["content-type"].startswith("application/json")


@given(st.text())  # no lone surrogates: those are below
def test_grpc_message_is_printable_ascii_and_decodes_to_the_message(message: str):
    header = error_response(403, message, request=request("application/grpc")).headers["grpc-message"]
    assert all(0x20 <= ord(c) <= 0x7E for c in header)
    assert unquote(header) == message


def test_a_lone_surrogate_in_the_message_is_written_out():
    header = error_response(403, "host \udcff.", request=request("application/grpc")).headers["grpc-message"]
    assert unquote(header) == "host \\udcff."


def test_every_mapped_status_is_a_grpc_code():
    assert set(GRPC_CODES.values()) <= set(range(17)) and GRPC_CODES["UNKNOWN"] == 2
