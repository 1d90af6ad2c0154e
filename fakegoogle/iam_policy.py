"""Who may act as which service account: the "Service Account Token Creator" grant table.

iamcredentials walks a delegation chain (caller -> delegates... -> target) and needs, for every
hop, a grant of roles/iam.serviceAccountTokenCreator to the hop's source on its destination.
Tests set grants per test (``reset`` drops them); accounts the federation registered as
impersonable stay open to any caller, as before the table existed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

SA_SUFFIX = ".gserviceaccount.com"


class TokenCreatorGrants:
    """Thread-safe (member, service account) grants plus the service accounts tests created."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: set[tuple[str, str]] = set()
        self._accounts: set[str] = set()

    def grant(self, member: str, target: str) -> None:
        """``member`` (an email, or a federated ``principal://`` name) may act as ``target``;
        both become known accounts when they are service accounts."""
        with self._lock:
            self._grants.add((member.lower(), target.lower()))
            self._accounts.add(target.lower())
            if member.lower().endswith(SA_SUFFIX):
                self._accounts.add(member.lower())

    def revoke(self, member: str, target: str) -> None:
        with self._lock:
            self._grants.discard((member.lower(), target.lower()))

    def add_account(self, email: str) -> None:
        """A service account that exists but nobody may impersonate yet (403, not 404)."""
        with self._lock:
            self._accounts.add(email.lower())

    def knows(self, email: str) -> bool:
        with self._lock:
            return email.lower() in self._accounts

    def allows(self, member: str | None, target: str) -> bool:
        if member is None:
            return False
        with self._lock:
            return (member.lower(), target.lower()) in self._grants

    def reset(self) -> None:
        with self._lock:
            self._grants.clear()
            self._accounts.clear()


def chain_loop(delegates: list[str], target: str) -> str | None:
    """The account a chain revisits, or None.

    Self-delegation (the last delegate is the target itself) is a real, working pattern and
    only needs the target to hold the role on itself; any other repeat is a loop.
    """
    hops = [d.lower() for d in delegates]
    if hops and hops[-1] == target.lower():
        hops.pop()
    seen: set[str] = set()
    for account in [*hops, target.lower()]:
        if account in seen:
            return account
        seen.add(account)
    return None


def first_denied_hop(
    caller: str | None, delegates: list[str], target: str, may_act_as: Callable[[str | None, str], bool]
) -> tuple[str | None, str] | None:
    """The first (source, destination) hop of caller -> delegates... -> target that is not
    allowed, or None when the whole chain is."""
    sources: list[str | None] = [caller, *delegates]
    for source, destination in zip(sources, [*delegates, target]):
        if not may_act_as(source, destination):
            return source, destination
    return None
