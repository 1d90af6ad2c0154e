"""Test helper: make urllib3 (hence requests/google-auth) reach the fake by real host names.

Without DNS for *.googleapis.com (and *.a.run.app), this redirects the TCP connect while
keeping SNI, Host and certificate checks on the real names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import urllib3.util.connection as urllib3_connection

from .fake import FakeGoogle

OTHER_HOSTS = ("www.example.test", "example.test")


def target_for(fg: FakeGoogle, host: str) -> tuple[str, int] | None:
    """Where a connection to ``host`` should really go (None: leave it alone)."""
    host = host.lower().rstrip(".")
    if host == "googleapis.com" or host.endswith(".googleapis.com"):
        return fg.googleapis_addr
    if host.endswith(".a.run.app"):
        return fg.run_addr
    if host in OTHER_HOSTS:
        return fg.other_addr
    if host == "metadata.google.internal":
        return fg.metadata_addr
    return None


@contextlib.contextmanager
def route_urllib3_to(fg: FakeGoogle) -> Iterator[None]:
    """Patch urllib3's connect so Google host names land on ``fg`` (not thread-local)."""
    original = urllib3_connection.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        return original(target_for(fg, address[0]) or address, *args, **kwargs)

    urllib3_connection.create_connection = create_connection
    try:
        yield
    finally:
        urllib3_connection.create_connection = original
