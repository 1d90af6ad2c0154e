"""The fake's gRPC servers on their own (no proxy): Pub/Sub semantics, the token check, leaks, shutdown."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fakegoogle import FakeGoogle
from fakegoogle.pubsub import (
    AcknowledgeRequest,
    GetTopicRequest,
    ModifyAckDeadlineRequest,
    PublishRequest,
    PublishResponse,
    PubsubMessage,
    PullRequest,
    PullResponse,
    StreamingPullRequest,
    StreamingPullResponse,
    Subscription,
    Topic,
)

PUBLISHER = "/google.pubsub.v1.Publisher/"
SUBSCRIBER = "/google.pubsub.v1.Subscriber/"
EMPTY = (lambda b: b, lambda b: b)  # google.protobuf.Empty as raw bytes
WAIT = 20.0


@pytest.fixture(scope="module")
def fg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGoogle]:
    with FakeGoogle(tmp_path_factory.mktemp("fakegoogle-grpc")) as fake:
        yield fake


@pytest.fixture
def channel(fg: FakeGoogle) -> Iterator[grpc.Channel]:
    credentials = grpc.ssl_channel_credentials(fg.google_ca_pem.read_bytes())
    with grpc.secure_channel("{}:{}".format(*fg.pubsub_addr), credentials,
                             options=[("grpc.ssl_target_name_override", "pubsub.googleapis.com")]) as ch:
        yield ch


@pytest.fixture
def auth(fg: FakeGoogle) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {fg.issue_token()}")]


def rpc(channel: grpc.Channel, path: str, request_type: Any, response_type: Any) -> grpc.UnaryUnaryMultiCallable:
    return channel.unary_unary(path, request_serializer=request_type.SerializeToString,
                               response_deserializer=response_type.FromString if response_type else None)


def names(tag: str) -> tuple[str, str]:
    return f"projects/fake-project/topics/t-{tag}", f"projects/fake-project/subscriptions/s-{tag}"


def setup_topic(channel: grpc.Channel, auth: list[tuple[str, str]], tag: str) -> tuple[str, str]:
    topic, subscription = names(tag)
    rpc(channel, PUBLISHER + "CreateTopic", Topic, Topic)(Topic(name=topic), metadata=auth, timeout=WAIT)
    rpc(channel, SUBSCRIBER + "CreateSubscription", Subscription, Subscription)(
        Subscription(name=subscription, topic=topic), metadata=auth, timeout=WAIT)
    return topic, subscription


def publish(channel: grpc.Channel, auth: list[tuple[str, str]], topic: str, *data: bytes) -> list[str]:
    answer = rpc(channel, PUBLISHER + "Publish", PublishRequest, PublishResponse)(
        PublishRequest(topic=topic, messages=[PubsubMessage(data=d) for d in data]), metadata=auth, timeout=WAIT)
    return list(answer.message_ids)


@pytest.mark.parametrize("metadata", [[], [("authorization", "Bearer ya29.not-issued")],
                                      [("authorization", "Basic dXNlcjpwYXNz")]])
def test_calls_without_a_valid_token_are_unauthenticated(fg: FakeGoogle, channel: grpc.Channel,
                                                         metadata: list[tuple[str, str]]) -> None:
    fg.clear_requests()
    with pytest.raises(grpc.RpcError) as caught:
        rpc(channel, PUBLISHER + "GetTopic", GetTopicRequest, Topic)(
            GetTopicRequest(topic="projects/p/topics/any"), metadata=metadata, timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    [seen] = fg.requests
    assert (seen.server, seen.path, seen.token_valid) == ("pubsub", PUBLISHER + "GetTopic", False)


def test_revoked_token_is_unauthenticated(fg: FakeGoogle, channel: grpc.Channel) -> None:
    token = fg.issue_token()
    fg.revoke(token)
    with pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/fakegoogle.testing.v1.Echo/Unary")(
            b"x", metadata=[("authorization", f"Bearer {token}")], timeout=WAIT)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_publish_then_pull_acknowledge_and_nack(fg: FakeGoogle, channel: grpc.Channel,
                                                auth: list[tuple[str, str]]) -> None:
    topic, subscription = setup_topic(channel, auth, "pull")
    ids = publish(channel, auth, topic, b"one", b"two")
    assert len(set(ids)) == 2
    pull = rpc(channel, SUBSCRIBER + "Pull", PullRequest, PullResponse)
    got = pull(PullRequest(subscription=subscription, max_messages=10), metadata=auth, timeout=WAIT)
    assert [m.message.data for m in got.received_messages] == [b"one", b"two"]
    assert [m.message.message_id for m in got.received_messages] == ids
    assert all(m.message.publish_time.seconds > 0 and m.delivery_attempt == 1 for m in got.received_messages)
    first, second = (m.ack_id for m in got.received_messages)
    rpc(channel, SUBSCRIBER + "Acknowledge", AcknowledgeRequest, None)(
        AcknowledgeRequest(subscription=subscription, ack_ids=[first]), metadata=auth, timeout=WAIT)
    rpc(channel, SUBSCRIBER + "ModifyAckDeadline", ModifyAckDeadlineRequest, None)(
        ModifyAckDeadlineRequest(subscription=subscription, ack_ids=[second], ack_deadline_seconds=0),
        metadata=auth, timeout=WAIT)
    again = pull(PullRequest(subscription=subscription, max_messages=10), metadata=auth, timeout=WAIT)
    assert [(m.message.data, m.delivery_attempt) for m in again.received_messages] == [(b"two", 2)]
    assert fg.pubsub.acked(subscription) == 1


def test_pubsub_errors(fg: FakeGoogle, channel: grpc.Channel, auth: list[tuple[str, str]]) -> None:
    topic, subscription = setup_topic(channel, auth, "errors")
    cases = [
        (lambda: rpc(channel, PUBLISHER + "CreateTopic", Topic, Topic)(Topic(name=topic), metadata=auth),
         grpc.StatusCode.ALREADY_EXISTS),
        (lambda: rpc(channel, PUBLISHER + "CreateTopic", Topic, Topic)(Topic(name="topics/x"), metadata=auth),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: rpc(channel, PUBLISHER + "GetTopic", GetTopicRequest, Topic)(
            GetTopicRequest(topic=topic + "-missing"), metadata=auth), grpc.StatusCode.NOT_FOUND),
        (lambda: publish(channel, auth, topic + "-missing", b"x"), grpc.StatusCode.NOT_FOUND),
        (lambda: publish(channel, auth, topic), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: rpc(channel, SUBSCRIBER + "Pull", PullRequest, PullResponse)(
            PullRequest(subscription=subscription + "-missing"), metadata=auth), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == code


def test_streaming_pull_delivers_messages_as_they_are_published(fg: FakeGoogle, channel: grpc.Channel,
                                                                auth: list[tuple[str, str]]) -> None:
    topic, subscription = setup_topic(channel, auth, "stream")
    outgoing: queue.Queue[StreamingPullRequest | None] = queue.Queue()
    outgoing.put(StreamingPullRequest(subscription=subscription, stream_ack_deadline_seconds=10))

    def requests() -> Iterator[StreamingPullRequest]:
        while (request := outgoing.get()) is not None:
            yield request

    stream = channel.stream_stream(SUBSCRIBER + "StreamingPull",
                                   request_serializer=StreamingPullRequest.SerializeToString,
                                   response_deserializer=StreamingPullResponse.FromString)(
        requests(), metadata=auth, timeout=WAIT)
    try:
        for data in (b"first", b"second"):
            publish(channel, auth, topic, data)
            [received] = next(stream).received_messages  # each arrives before the next is published
            assert received.message.data == data
            outgoing.put(StreamingPullRequest(ack_ids=[received.ack_id]))
        outgoing.put(None)  # the client half-closes: the server ends the stream
        assert list(stream) == []
    finally:
        stream.cancel()
    assert fg.pubsub.acked(subscription) == 2


def test_a_token_sent_to_the_non_google_grpc_origin_is_a_leak(fg: FakeGoogle) -> None:
    credentials = grpc.ssl_channel_credentials(fg.other_ca_pem.read_bytes())
    with grpc.secure_channel("{}:{}".format(*fg.grpc_other_addr), credentials,
                             options=[("grpc.ssl_target_name_override", "grpc.example.test")]) as ch:
        assert ch.unary_unary("/fakegoogle.testing.v1.Echo/Unary")(b"no token", timeout=WAIT) == b"no token"
        assert fg.leaks == []
        ch.unary_unary("/fakegoogle.testing.v1.Echo/Unary")(
            b"x", metadata=[("authorization", f"Bearer {fg.issue_token()}")], timeout=WAIT)
    assert fg.leaks == ["authorization"]


def test_stop_ends_calls_still_running(tmp_path: Path) -> None:
    fake = FakeGoogle(tmp_path).start()
    credentials = grpc.ssl_channel_credentials(fake.google_ca_pem.read_bytes())
    with grpc.secure_channel("{}:{}".format(*fake.pubsub_addr), credentials,
                             options=[("grpc.ssl_target_name_override", "pubsub.googleapis.com")]) as ch:
        metadata = [("authorization", f"Bearer {fake.issue_token()}")]
        waiting = ch.unary_unary("/fakegoogle.testing.v1.Echo/Wait").future(b"", metadata=metadata, timeout=60)
        gated = ch.unary_stream("/fakegoogle.testing.v1.Echo/ServerStream")(
            b"2", metadata=[*metadata, ("x-gate", "never")], timeout=60)
        assert next(gated) == b"message 0"
        assert fake.grpc_calls.wait_for("started", "Wait") is not None
        began = time.monotonic()
        fake.stop()
        assert time.monotonic() - began < 10  # parked calls were let go, not waited out
        with pytest.raises(grpc.RpcError):
            waiting.result(timeout=WAIT)
