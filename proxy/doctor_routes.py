"""``doctor``'s check of the credentials routes name: impersonation, ID tokens, key files.

One token is minted with each distinct credential through the proxy's own token sources (the
same factories, transport, --resolve, --upstream-ca and --upstream-proxy), so a missing Token
Creator grant, a gcloud user asked for an ID token or an unreadable key file shows here, before
the first request meets it. ADC is checked by ``doctor``'s own "token" entry; ``none`` mints
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from addons.policy_model import Credential, Route
from addons.resolve import ResolveRule
from addons.token_cache import TokenError
from proxy.doctor_entry import Entry, fail, ok


def check_route_credentials(settings: Any, resolve_rules: Sequence[ResolveRule], ca_bundle: str | None,
                            routing: Any) -> list[Entry]:
    """One entry for the policy, then one per credential tried (OK with its principal, or FAIL
    with the sentence the proxy would answer a client with)."""
    from addons.policy_file import PolicyError
    from addons.routing import policy_from_options
    from addons.token_sources import TokenSources

    try:
        policy = policy_from_options(settings)
    except PolicyError as e:
        return [fail("routes", str(e), "fix the config file or flag the message names")]
    entries = [ok("routes", f"{len(policy.routes)} route(s), {len(policy.rules)} rule(s), default {policy.default}")]
    chosen = policy.minted_credentials()
    if not chosen:
        return entries
    sources = TokenSources()
    sources.set_routing(routing)
    sources.configure(list(settings.scopes), resolve_rules, ca_bundle)
    try:
        for route, credential, host, _per_host in chosen:  # a per-host audience: tried for example.SUFFIX
            entries.append(_try(sources, route, credential, host))
    finally:
        sources.close()
    return entries


def _try(sources: Any, route: Route, credential: Credential, host: str) -> Entry:
    check = f"route {route.name}"
    what = credential.describe(host)
    source = sources.source_for(credential, host)
    source.cache.on_change = None  # the entry says it; no log line as well
    started = time.monotonic()
    try:
        token = source.cache.refresh()
    except TokenError as e:
        return fail(check, f"{what}: no token: {str(e).rstrip('.')}", _fix(credential))
    elapsed_ms = (time.monotonic() - started) * 1000
    speaks = source.principal or "an unknown principal"
    return ok(check, f"{what}: minted one in {elapsed_ms:.0f} ms as {speaks} (fingerprint {token.fingerprint})")


def _fix(credential: Credential) -> str:
    if credential.kind == "key_file":
        return "point key_file at a readable service-account key file"
    if credential.chain:
        return "grant the role the message names, or change the route's chain"
    return "give this route --impersonate-service-account or a service-account key"
