"""Table: gRPC calls as clients send them -> service and api_method; grpc-status into the audit record."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from addons.audit_log import audit_record
from addons.google_api import ApiCall, describe, grpc_status, is_grpc

GRPC = "application/grpc"

CASES = [
    # google-cloud-pubsub, google-cloud-storage (gRPC), Vertex AI, Firestore.
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish", GRPC,
     ("pubsub", "google.pubsub.v1.Publisher.Publish")),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Subscriber/StreamingPull", "application/grpc+proto",
     ("pubsub", "google.pubsub.v1.Subscriber.StreamingPull")),
    ("storage.googleapis.com", "/google.storage.v2.Storage/ReadObject", GRPC,
     ("storage", "google.storage.v2.Storage.ReadObject")),
    ("us-central1-aiplatform.googleapis.com", "/google.cloud.aiplatform.v1.PredictionService/Predict", GRPC,
     ("aiplatform", "google.cloud.aiplatform.v1.PredictionService.Predict")),
    ("firestore.googleapis.com", "/google.firestore.v1.Firestore/Listen", "application/grpc; charset=utf-8",
     ("firestore", "google.firestore.v1.Firestore.Listen")),
    ("PUBSUB.GOOGLEAPIS.COM.", "/google.pubsub.v1.Publisher/Publish", "Application/GRPC",
     ("pubsub", "google.pubsub.v1.Publisher.Publish")),
    ("pubsub.googleapis.com:443", "/google.pubsub.v1.Publisher/Publish", GRPC,
     ("pubsub", "google.pubsub.v1.Publisher.Publish")),
    ("pubsub.googleapis.com", "/grpc.health.v1.Health/Check", "application/grpc-web+proto",
     ("pubsub", "grpc.health.v1.Health.Check")),
    ("pubsub.googleapis.com", "/Echo/Unary", GRPC, ("pubsub", "Echo.Unary")),  # a service without a package
    ("bucket.with.dots.storage.googleapis.com", "/google.storage.v2.Storage/ReadObject", GRPC,
     ("storage", "google.storage.v2.Storage.ReadObject")),
    # Not a gRPC path: the service from the host, the method never guessed.
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish/extra", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish?x=1", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "//Publish", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google..pubsub.Publisher/Publish", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish\n", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Pub%6Cish", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publísh", GRPC, ("pubsub", None)),
    ("pubsub.googleapis.com", "google.pubsub.v1.Publisher/Publish", GRPC, ("pubsub", None)),
    ("www.googleapis.com", "/google.pubsub.v1.Publisher/Publish", GRPC, (None, "google.pubsub.v1.Publisher.Publish")),
    # Not gRPC at all (the content type says so): the REST parsers decide, as before.
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish", "application/json", ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish", "", ("pubsub", None)),
    ("pubsub.googleapis.com", "/google.pubsub.v1.Publisher/Publish", "application/grpcx", ("pubsub", None)),
    ("storage.googleapis.com", "/my.bucket/Object", "text/plain",
     ("storage", "storage.objects.insert", "projects/_/buckets/my.bucket/objects/Object")),
    # Not Google: nothing, whatever the path.
    ("googleapis.com", "/google.pubsub.v1.Publisher/Publish", GRPC, (None, None)),
    ("pubsub.googleapis.com.evil.test", "/google.pubsub.v1.Publisher/Publish", GRPC, (None, None)),
    ("grpc.example.test", "/fakegoogle.testing.v1.Echo/Unary", GRPC, (None, None)),
]


@pytest.mark.parametrize(("host", "path", "content_type", "expected"), CASES,
                         ids=[f"{h}{p} {c}"[:90] for h, p, c, _ in CASES])
def test_describe_grpc(host: str, path: str, content_type: str, expected: tuple[str | None, ...]) -> None:
    assert describe(host, "POST", path, content_type) == ApiCall(*expected)


def test_grpc_content_type_on_a_get_is_not_a_grpc_call() -> None:
    # gRPC is always POST; a GET keeps the REST reading of its path.
    assert describe("storage.googleapis.com", "GET", "/b1/a.txt", GRPC) == describe(
        "storage.googleapis.com", "GET", "/b1/a.txt")


@pytest.mark.parametrize(("content_type", "expected"), [
    ("application/grpc", True), ("application/grpc+proto", True), ("application/grpc+json", True),
    ("application/grpc-web", True), ("application/grpc-web-text+proto", True), (" APPLICATION/GRPC ; x=y", True),
    ("application/grpcx", False), ("application/json", False), ("", False), ("text/grpc", False),
])
def test_is_grpc(content_type: str, expected: bool) -> None:
    assert is_grpc(content_type) is expected


@pytest.mark.parametrize(("trailers", "headers", "expected"), [
    ({"grpc-status": "0"}, {}, 0),
    ({"grpc-status": "16"}, {"grpc-status": "0"}, 16),  # trailers win
    (None, {"grpc-status": "14"}, 14),  # Trailers-Only: the status in the one header block
    ({}, {"grpc-status": " 5 "}, 5),
    ({"grpc-status": "OK"}, {}, None),
    ({"grpc-status": "-1"}, {}, None),
    ({"grpc-status": "１"}, {}, None),  # a full-width digit: isdigit() says yes, int() would take it
    ({"grpc-status": "99999999999999999999"}, {}, None),
    ({"grpc-status": ""}, {}, None),
    (None, None, None),
    ({}, {}, None),
])
def test_grpc_status(trailers: dict[str, str] | None, headers: dict[str, str] | None, expected: int | None) -> None:
    assert grpc_status(trailers, headers) == expected


def grpc_flow(path: str, *, trailers: dict[str, str] | None, headers: dict[str, str] | None = None,
              content_type: str = GRPC) -> http.HTTPFlow:
    flow = tflow.tflow(resp=True)
    assert flow.response is not None
    flow.request.host = "pubsub.googleapis.com"
    flow.request.method = "POST"
    flow.request.path = path
    flow.request.headers["content-type"] = content_type
    flow.response.headers.update(headers or {})
    if trailers is not None:
        flow.response.trailers = http.Headers([(k.encode(), v.encode()) for k, v in trailers.items()])
    flow.metadata["gauth"] = {"host": "pubsub.googleapis.com", "auth": "injected"}
    return flow


def test_audit_record_of_a_grpc_call() -> None:
    flow = grpc_flow("/google.pubsub.v1.Publisher/Publish", trailers={"grpc-status": "0", "grpc-message": ""})
    record = audit_record(flow)
    assert record["service"] == "pubsub" and record["api_method"] == "google.pubsub.v1.Publisher.Publish"
    assert record["grpc_status"] == 0


def test_audit_record_of_a_trailers_only_answer() -> None:
    flow = grpc_flow("/google.pubsub.v1.Publisher/Publish", trailers=None,
                     headers={"grpc-status": "16", "grpc-message": "Request had invalid authentication credentials."})
    assert audit_record(flow)["grpc_status"] == 16


def test_audit_record_without_grpc_status_has_none() -> None:
    assert "grpc_status" not in audit_record(grpc_flow("/google.pubsub.v1.Publisher/Publish", trailers=None))
    rest = grpc_flow("/v1/projects/p/topics/t:publish", trailers=None, content_type="application/json")
    assert "grpc_status" not in audit_record(rest) and "api_method" not in audit_record(rest)
