"""mitmproxy addons for gcp-auth-proxy: one concern each, also loadable with ``mitmdump -s``."""

from __future__ import annotations

from typing import Any


def default_addons() -> list[Any]:
    """Our addons in the order they must run.

    Order is behaviour: Destinations first (it refuses TLS to the proxy port and labels every
    request with where it really goes; every later concern decides on that), connection limits
    next (they count every connection), proxy auth next (strangers get nothing), then policy (a denied request never gets a token), then the address
    override, then the metadata guard (it checks the final address), then placeholder stripping (a `run` child's
    placeholder token is removed before GoogleAuth decides whether the request brings its own
    Authorization), then token injection, and the audit log last so it sees what happened
    (its 503 gate is the last word before a request goes upstream); metrics after the audit log
    count what the client finally got; the admin endpoints only read the others.
    """
    from addons.admin import Admin
    from addons.audit_log import AuditLog
    from addons.destination import Destinations
    from addons.google_auth import GoogleAuth
    from addons.limits import Limits
    from addons.metadata_guard import MetadataGuard
    from addons.metrics import Metrics
    from addons.placeholder import PlaceholderAuth
    from addons.policy import Policy
    from addons.proxy_auth import ProxyAuth
    from addons.resolve import Resolve

    return [Destinations(), Limits(), ProxyAuth(), Policy(), Resolve(), MetadataGuard(),
            PlaceholderAuth(), GoogleAuth(), AuditLog(), Metrics(), Admin()]
