"""Log of API requests received by the googleapis and other origins."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RecordedRequest:
    """What one origin saw; tests assert on this to check the proxy's behaviour."""

    host: str
    method: str
    path: str  # with query string
    authorization: str | None
    token_valid: bool
    headers: dict[str, str]
    body_bytes: int
    http_version: str
    server: str  # "googleapis" | "other"


class RequestLog:
    """Thread-safe log with running totals.

    Only the newest ``max_records`` entries are kept so long soak runs stay flat
    in memory; the totals keep counting regardless.
    """

    def __init__(self, max_records: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._items: deque[RecordedRequest] = deque(maxlen=max_records)
        self.total = 0
        self.without_valid_token = 0

    def add(self, record: RecordedRequest) -> None:
        with self._lock:
            self._items.append(record)
            self.total += 1
            if not record.token_valid:
                self.without_valid_token += 1
            self._added.notify_all()

    def wait_for(self, matches: Callable[[RecordedRequest], bool], count: int, timeout: float) -> list[RecordedRequest]:
        """The stored records ``matches`` accepts, once there are ``count`` (or what there is after ``timeout``)."""
        with self._added:
            found: list[RecordedRequest] = []

            def seen() -> bool:
                found[:] = [r for r in self._items if matches(r)]
                return len(found) >= count

            self._added.wait_for(seen, timeout)
            return found

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Drop stored records (the totals keep counting, for soak stats)."""
        with self._lock:
            self._items.clear()
