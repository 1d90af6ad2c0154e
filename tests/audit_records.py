"""Reading the proxy's audit log in tests: whole records only, and waiting for ones not yet written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records written so far; a line still being written (no newline yet) is not one."""
    text = path.read_text() if path.exists() else ""
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def wait_for_records(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """At least ``count`` records (a record is written when its flow ends, which can be just after
    the client got its last byte, or moved on after a cancel); a condition with a deadline."""
    deadline = time.monotonic() + timeout
    while len(found := read_records(path)) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} audit records in {path}, found {len(found)}: {found}")
        time.sleep(0.02)
    return found
