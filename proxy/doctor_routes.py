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

from addons.hosts import HostPattern
from addons.policy_model import Credential, Route
from addons.resolve import ResolveRule
from addons.token_cache import TokenError
from proxy.doctor_entry import Entry, fail, ok

# An ID-token route over a wildcard with the default audience mints per host; doctor tries this
# label in its place (an ID token grant is for any audience the credential may name).
EXAMPLE_LABEL = "example"


def example_host(pattern: HostPattern) -> str:
    """A host the pattern matches: itself, or ``example.SUFFIX`` for a wildcard."""
    return f"{EXAMPLE_LABEL}.{pattern.suffix}" if pattern.wildcard else pattern.suffix


def credentials_to_try(routes: Sequence[Route]) -> list[tuple[Route, Credential, str]]:
    """Each distinct credential that mints something other than ADC, with the first route naming
    it and a host to mint for (the audience of a default-audience ID token comes from it)."""
    seen: set[tuple[Credential, str | None]] = set()
    chosen = []
    for route in routes:
        credential = route.credential
        if credential.kind in ("adc", "none"):
            continue
        host = example_host(route.hosts[0])
        audience = (credential.audience or f"https://{host}") if credential.kind == "id_token" else None
        if (credential, audience) in seen:
            continue
        seen.add((credential, audience))
        chosen.append((route, credential, host))
    return chosen


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
    routes = policy.ordered_routes()
    rules = len(policy.rules)
    entries = [ok("routes", f"{len(routes)} route(s), {rules} rule(s), default {policy.default}")]
    chosen = credentials_to_try(routes)
    if not chosen:
        return entries
    sources = TokenSources()
    sources.set_routing(routing)
    sources.configure(list(settings.scopes), resolve_rules, ca_bundle)
    try:
        for route, credential, host in chosen:
            entries.append(_try(sources, route, credential, host))
    finally:
        sources.close()
    return entries


def _try(sources: Any, route: Route, credential: Credential, host: str) -> Entry:
    check = f"route {route.name}"
    what = credential.describe().replace("https://HOST", f"https://{host}")
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
