"""Which ID tokens a Cloud Run service (or an IAP-protected one) accepts, and who may invoke it.

Cloud Run accepts an ID token whose ``aud`` is the service URL (``https://HOST``) or one of its
custom audiences; a Cloud Function (1st gen, ``REGION-PROJECT.cloudfunctions.net/FUNCTION``) only
its function URL (``https://HOST/FUNCTION``); IAP accepts only its OAuth client id (``NNN-xxx.apps.googleusercontent.com``),
so registering such an audience makes the host IAP-like. ``roles/run.invoker`` is modelled as an
optional set of emails per host (unset: any valid token may call).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

RUN_SUFFIX = ".a.run.app"
FUNCTIONS_SUFFIX = ".cloudfunctions.net"
IAP_CLIENT_SUFFIX = ".apps.googleusercontent.com"


def is_run_host(host: str) -> bool:
    """``*.a.run.app`` or ``*.cloudfunctions.net``: one label in front, as the certificate's wildcards cover."""
    for suffix in (RUN_SUFFIX, FUNCTIONS_SUFFIX):
        name = host.removesuffix(suffix)
        if host.endswith(suffix) and name and "." not in name:
            return True
    return False


def function_url(host: str, path: str) -> str:
    """``https://HOST/FUNCTION``: a Cloud Function's URL, the first path segment naming it."""
    return f"https://{host.lower()}/{path.lstrip('/').split('/', 1)[0].split('?', 1)[0]}"


class RunAccess:
    """Per-host audiences and invokers, set by tests (thread-safe; ``reset`` between tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._audiences: dict[str, set[str]] = {}
        self._invokers: dict[str, frozenset[str]] = {}

    def add_audience(self, host: str, audience: str) -> None:
        with self._lock:
            self._audiences.setdefault(host.lower(), set()).add(audience)

    def set_invokers(self, host: str, emails: Iterable[str] | None) -> None:
        with self._lock:
            if emails is None:
                self._invokers.pop(host.lower(), None)
            else:
                self._invokers[host.lower()] = frozenset(e.lower() for e in emails)

    def audiences_for(self, host: str, path: str = "/") -> set[str]:
        """The ``aud`` values ``host`` accepts (for a Cloud Function, the one ``path`` names)."""
        with self._lock:
            extra = set(self._audiences.get(host.lower(), ()))
        iap = {a for a in extra if a.endswith(IAP_CLIENT_SUFFIX)}
        if host.lower().endswith(FUNCTIONS_SUFFIX):
            return {function_url(host, path)} | extra
        return iap or {f"https://{host.lower()}"} | extra

    def invokers_for(self, host: str) -> frozenset[str] | None:
        with self._lock:
            return self._invokers.get(host.lower())

    def reset(self) -> None:
        with self._lock:
            self._audiences.clear()
            self._invokers.clear()
