"""mitmproxy addons for gcp-auth-proxy: one concern each, also loadable with ``mitmdump -s``."""

from __future__ import annotations

from typing import Any


def default_addons() -> list[Any]:
    """Our addons in the order they must run.

    Order is behaviour: proxy auth first (strangers get nothing), then policy (a denied request
    never gets a token), then the address override, then token injection, and the audit log
    last so it sees what happened.
    """
    from addons.audit_log import AuditLog
    from addons.google_auth import GoogleAuth
    from addons.policy import Policy
    from addons.proxy_auth import ProxyAuth
    from addons.resolve import Resolve

    return [ProxyAuth(), Policy(), Resolve(), GoogleAuth(), AuditLog()]
