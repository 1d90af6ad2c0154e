"""A fake Cloud Pub/Sub: topics, subscriptions and the Publisher/Subscriber gRPC methods.

Enough of ``google.pubsub.v1`` for google-cloud-pubsub's publisher and its default
streaming-pull subscriber: Publisher CreateTopic/GetTopic/DeleteTopic/Publish, Subscriber
CreateSubscription/GetSubscription/DeleteSubscription/Pull/Acknowledge/ModifyAckDeadline/
StreamingPull. Messages are the installed package's own protobuf classes (proto-plus ``.pb()``),
served through grpcio generic handlers: no generated code. Delivery is at-least-once as in the real
service, but nothing expires: a message goes back to its queue only when it is nacked (a
ModifyAckDeadline to 0 s).
"""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.pubsub_v1.types import pubsub as types

log = logging.getLogger(__name__)

# The protobuf classes under the proto-plus wrappers: what goes over the wire.
Topic = types.Topic.pb()
Subscription = types.Subscription.pb()
PubsubMessage = types.PubsubMessage.pb()
ReceivedMessage = types.ReceivedMessage.pb()
PublishRequest = types.PublishRequest.pb()
PublishResponse = types.PublishResponse.pb()
GetTopicRequest = types.GetTopicRequest.pb()
DeleteTopicRequest = types.DeleteTopicRequest.pb()
GetSubscriptionRequest = types.GetSubscriptionRequest.pb()
DeleteSubscriptionRequest = types.DeleteSubscriptionRequest.pb()
PullRequest = types.PullRequest.pb()
PullResponse = types.PullResponse.pb()
AcknowledgeRequest = types.AcknowledgeRequest.pb()
ModifyAckDeadlineRequest = types.ModifyAckDeadlineRequest.pb()
StreamingPullRequest = types.StreamingPullRequest.pb()
StreamingPullResponse = types.StreamingPullResponse.pb()

PUBLISHER = "google.pubsub.v1.Publisher"
SUBSCRIBER = "google.pubsub.v1.Subscriber"
PULL_WAIT = 2.0  # how long a unary Pull waits for a first message before answering empty
STREAM_BATCH = 100  # messages per StreamingPullResponse at most

_TOPIC = re.compile(r"^projects/[^/]+/topics/[A-Za-z][-A-Za-z0-9._~+%]{2,254}$")
_SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[A-Za-z][-A-Za-z0-9._~+%]{2,254}$")


class RpcError(Exception):
    """A gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class _Queue:
    """One subscription: its settings and the messages waiting for or out to subscribers."""

    subscription: Any  # Subscription
    pending: deque[tuple[Any, int]] = field(default_factory=deque)  # (PubsubMessage, delivery attempt)
    outstanding: dict[str, tuple[Any, int]] = field(default_factory=dict)  # ack id -> (message, attempt)
    acked: int = 0


class PubsubModel:
    """Topics, subscriptions and their messages; every access under one condition."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.topics: dict[str, Any] = {}
        self.subscriptions: dict[str, _Queue] = {}
        self._ids = itertools.count(1)
        self.published = 0

    # -- topics ------------------------------------------------------------------------------------

    def create_topic(self, topic: Any) -> Any:
        if not _TOPIC.match(topic.name):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"Invalid [topics] name: ({topic.name})")
        with self._changed:
            if topic.name in self.topics:
                raise RpcError(grpc.StatusCode.ALREADY_EXISTS, "Topic already exists")
            stored = Topic()
            stored.CopyFrom(topic)
            self.topics[topic.name] = stored
            return stored

    def get_topic(self, name: str) -> Any:
        with self._changed:
            found = self.topics.get(name)
        if found is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={name}).")
        return found

    def delete_topic(self, name: str) -> None:
        with self._changed:
            if self.topics.pop(name, None) is None:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={name}).")

    def publish(self, topic: str, messages: list[Any]) -> list[str]:
        if not messages:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "The request contains no messages.")
        with self._changed:
            if topic not in self.topics:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={topic}).")
            ids = []
            for message in messages:
                stored = PubsubMessage()
                stored.CopyFrom(message)
                stored.message_id = str(next(self._ids))
                stored.publish_time.FromNanoseconds(time.time_ns())
                ids.append(stored.message_id)
                for queue in self.subscriptions.values():
                    if queue.subscription.topic == topic:
                        queue.pending.append((stored, 1))
            self.published += len(messages)
            self._changed.notify_all()
            return ids

    # -- subscriptions -----------------------------------------------------------------------------

    def create_subscription(self, subscription: Any) -> Any:
        if not _SUBSCRIPTION.match(subscription.name):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"Invalid [subscriptions] name: ({subscription.name})")
        with self._changed:
            if subscription.topic not in self.topics:
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={subscription.topic}).")
            if subscription.name in self.subscriptions:
                raise RpcError(grpc.StatusCode.ALREADY_EXISTS, "Subscription already exists")
            stored = Subscription()
            stored.CopyFrom(subscription)
            if not stored.ack_deadline_seconds:
                stored.ack_deadline_seconds = 10
            self.subscriptions[stored.name] = _Queue(stored)
            return stored

    def _queue(self, name: str) -> _Queue:
        queue = self.subscriptions.get(name)
        if queue is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"Resource not found (resource={name}).")
        return queue

    def get_subscription(self, name: str) -> Any:
        with self._changed:
            return self._queue(name).subscription

    def delete_subscription(self, name: str) -> None:
        with self._changed:
            self._queue(name)
            del self.subscriptions[name]
            self._changed.notify_all()

    def take(self, name: str, limit: int, *, wait: float, alive: Callable[[], bool]) -> list[Any]:
        """Up to ``limit`` messages as ReceivedMessages, waiting up to ``wait`` s for the first."""
        deadline = time.monotonic() + wait
        with self._changed:
            while True:
                queue = self._queue(name)
                if queue.pending or not alive():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            received: list[Any] = []
            while queue.pending and len(received) < limit:
                message, attempt = queue.pending.popleft()
                ack_id = f"{name.rpartition('/')[2]}:{message.message_id}:{attempt}"
                queue.outstanding[ack_id] = (message, attempt)
                out = ReceivedMessage(ack_id=ack_id, delivery_attempt=attempt)
                out.message.CopyFrom(message)
                received.append(out)
            return received

    def acknowledge(self, name: str, ack_ids: list[str]) -> None:
        with self._changed:
            queue = self._queue(name)
            for ack_id in ack_ids:
                if queue.outstanding.pop(ack_id, None) is not None:
                    queue.acked += 1
            self._changed.notify_all()

    def modify_ack_deadline(self, name: str, ack_ids: list[str], seconds: int) -> None:
        """A deadline of 0 is a nack: the message goes back to the front of its queue."""
        if seconds == 0:
            self.requeue(name, ack_ids)
        else:
            with self._changed:
                self._queue(name)

    def requeue(self, name: str, ack_ids: list[str]) -> None:
        with self._changed:
            queue = self.subscriptions.get(name)
            if queue is None:
                return
            for ack_id in reversed(ack_ids):
                found = queue.outstanding.pop(ack_id, None)
                if found is not None:
                    queue.pending.appendleft((found[0], found[1] + 1))
            self._changed.notify_all()

    def acked(self, name: str) -> int:
        with self._changed:
            return self._queue(name).acked

    def wake(self) -> None:
        """Wake every waiting pull (a stream ended or the fake is stopping)."""
        with self._changed:
            self._changed.notify_all()


# -- the gRPC methods ------------------------------------------------------------------------------

def _unary(fn: Callable[[Any, grpc.ServicerContext], Any], request: Any,
           serialize: Callable[[Any], bytes]) -> grpc.RpcMethodHandler:
    """A unary method whose RpcError becomes the call's status."""
    def behaviour(req: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(req, context)
        except RpcError as e:
            context.abort(e.code, e.message)
            raise  # abort() has raised already; this is for the type checker

    return grpc.unary_unary_rpc_method_handler(
        behaviour, request_deserializer=request.FromString, response_serializer=serialize)


def _empty(_: Any) -> bytes:
    return b""  # google.protobuf.Empty


def streaming_pull(model: PubsubModel, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    """Messages as they are published, until the client closes or cancels the stream.

    A reader thread applies the acks and modacks the client sends on the stream meanwhile.
    """
    try:
        first = next(requests)
    except StopIteration:
        return
    name = first.subscription
    try:
        model.get_subscription(name)
    except RpcError as e:
        context.abort(e.code, e.message)
    closed = threading.Event()

    def apply(request: Any) -> None:
        if request.ack_ids:
            model.acknowledge(name, list(request.ack_ids))
        for ack_id, seconds in zip(request.modify_deadline_ack_ids, request.modify_deadline_seconds):
            model.modify_ack_deadline(name, [ack_id], seconds)

    def close() -> None:
        closed.set()
        model.wake()

    def read() -> None:
        try:
            for request in requests:
                apply(request)
        except Exception as e:  # noqa: BLE001 - a cancelled stream raises here; it just ends
            log.debug("streaming pull reader ended: %s", e)
        finally:
            close()

    apply(first)
    context.add_callback(close)
    context.send_initial_metadata(())  # headers at once, as Google's front end does
    threading.Thread(target=read, name="fake-pubsub-stream-reader", daemon=True).start()
    # Messages delivered but not acknowledged stay outstanding when the stream ends: their ack ids
    # remain valid (a client acknowledges after closing its stream), as in the real service.
    while context.is_active() and not closed.is_set():
        try:
            batch = model.take(name, STREAM_BATCH, wait=3600.0,
                               alive=lambda: context.is_active() and not closed.is_set())
        except RpcError as e:  # the subscription was deleted
            context.abort(e.code, e.message)
        if batch:
            yield StreamingPullResponse(received_messages=batch)


def handlers(model: PubsubModel) -> list[grpc.GenericRpcHandler]:
    """The Publisher and Subscriber services over ``model``."""

    def create_topic(req: Any, _: grpc.ServicerContext) -> Any:
        return model.create_topic(req)

    def publish(req: Any, _: grpc.ServicerContext) -> Any:
        return PublishResponse(message_ids=model.publish(req.topic, list(req.messages)))

    def delete_topic(req: Any, _: grpc.ServicerContext) -> None:
        model.delete_topic(req.topic)

    def pull(req: Any, context: grpc.ServicerContext) -> Any:
        limit = req.max_messages or 1000
        return PullResponse(received_messages=model.take(req.subscription, limit, wait=PULL_WAIT,
                                                         alive=context.is_active))

    def acknowledge(req: Any, _: grpc.ServicerContext) -> None:
        model.acknowledge(req.subscription, list(req.ack_ids))

    def modify_ack_deadline(req: Any, _: grpc.ServicerContext) -> None:
        model.modify_ack_deadline(req.subscription, list(req.ack_ids), req.ack_deadline_seconds)

    def delete_subscription(req: Any, _: grpc.ServicerContext) -> None:
        model.delete_subscription(req.subscription)

    def serialize(message: Any) -> bytes:
        return message.SerializeToString()  # type: ignore[no-any-return]

    publisher = {
        "CreateTopic": _unary(create_topic, Topic, serialize),
        "GetTopic": _unary(lambda req, _: model.get_topic(req.topic), GetTopicRequest, serialize),
        "DeleteTopic": _unary(delete_topic, DeleteTopicRequest, _empty),
        "Publish": _unary(publish, PublishRequest, serialize),
    }
    subscriber = {
        "CreateSubscription": _unary(lambda req, _: model.create_subscription(req), Subscription, serialize),
        "GetSubscription": _unary(lambda req, _: model.get_subscription(req.subscription),
                                  GetSubscriptionRequest, serialize),
        "DeleteSubscription": _unary(delete_subscription, DeleteSubscriptionRequest, _empty),
        "Pull": _unary(pull, PullRequest, serialize),
        "Acknowledge": _unary(acknowledge, AcknowledgeRequest, _empty),
        "ModifyAckDeadline": _unary(modify_ack_deadline, ModifyAckDeadlineRequest, _empty),
        "StreamingPull": grpc.stream_stream_rpc_method_handler(
            lambda requests, context: streaming_pull(model, requests, context),
            request_deserializer=StreamingPullRequest.FromString,
            response_serializer=StreamingPullResponse.SerializeToString,
        ),
    }
    return [grpc.method_handlers_generic_handler(PUBLISHER, publisher),
            grpc.method_handlers_generic_handler(SUBSCRIBER, subscriber)]
