"""One line of ``doctor``'s screen: OK, WARN or FAIL, what was checked, and the fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    status: str  # OK, WARN or FAIL
    check: str
    message: str
    fix: str | None = None


def ok(check: str, message: str) -> Entry:
    return Entry("OK", check, message)


def warn(check: str, message: str, fix: str) -> Entry:
    return Entry("WARN", check, message, fix)


def fail(check: str, message: str, fix: str) -> Entry:
    return Entry("FAIL", check, message, fix)
