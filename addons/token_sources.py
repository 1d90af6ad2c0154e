"""One TokenSource per distinct credential a route names, made on first use.

ADC is the source made at start (the one /readyz and /metrics report on); impersonation, ID
tokens and key files each get their own, with the same single-flight cache, refresh-ahead and
backoff. Impersonation and ID tokens minted through IAM call IAM with the ADC token, taken from
the ADC source's cache, so the ADC token is still fetched once per lifetime however many
impersonated credentials use it. Every source fetches through the same transport settings
(--resolve, --upstream-ca, --upstream-proxy).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from addons.credentials import load_credentials, principal
from addons.policy_model import Credential, default_audience
from addons.resolve import ResolveRule
from addons.token_cache import TokenError
from addons.token_source import TokenSource
from addons.upstream_proxy import Routing

# ID tokens for a wildcard route with the default audience (https://HOST, or a Cloud Function's
# URL) get one source per audience; past this many, the least recently used is dropped (its token
# is simply minted again).
MAX_SOURCES = 1024
# New ID-token audiences a client can make the proxy mint for (a fresh *.a.run.app host or Cloud
# Function name each): a bucket of this many, refilled at this rate. Past it a request gets 429
# rather than a token grant: a client spraying names must not drive the token endpoint (the
# metadata server rate-limits at ~50 token queries a second, ADC's included) for everyone.
NEW_AUDIENCE_BURST = 100
NEW_AUDIENCES_PER_SECOND = 10.0


class AudienceBudget:
    """A token bucket for new ID-token audiences (``clock`` injectable for tests)."""

    def __init__(self, burst: int | None = None, rate: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = NEW_AUDIENCE_BURST if burst is None else burst
        self.rate = NEW_AUDIENCES_PER_SECOND if rate is None else rate
        self._clock = clock
        self._tokens = float(self.burst)
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class TokenSources:
    def __init__(self, adc: TokenSource | None = None, budget: AudienceBudget | None = None) -> None:
        self.adc = adc if adc is not None else TokenSource(label="adc")
        self.budget = budget if budget is not None else AudienceBudget()
        self._sources: OrderedDict[tuple[Credential, str | None], TokenSource] = OrderedDict()
        self._configured: tuple[Sequence[str], Sequence[ResolveRule], str | None] | None = None
        self.routing = Routing()

    def configure(self, scopes: Sequence[str], rules: Sequence[ResolveRule], ca_bundle: str | None) -> None:
        self._configured = (scopes, rules, ca_bundle)
        self.adc.configure(scopes, rules, ca_bundle)
        self._sources.clear()  # rebuilt on next use with the new settings

    def set_routing(self, routing: Routing) -> None:
        self.routing = routing
        self.adc.set_routing(routing)
        self._sources.clear()

    def close(self) -> None:
        self.adc.close()
        for source in self._sources.values():
            source.close()

    def source_for(self, credential: Credential, host: str, path: str = "/") -> TokenSource:
        """The source for this credential (and, for ID tokens, this request's audience: for a Cloud
        Function the path names it).

        Raises:
            TokenError: reason ``too_many_audiences`` when a new ID-token audience is over budget.
        """
        if credential.kind == "adc":
            return self.adc
        audience = (credential.audience or default_audience(host, path)) if credential.kind == "id_token" else None
        key = (credential, audience)
        source = self._sources.get(key)
        if source is not None:
            self._sources.move_to_end(key)
            return source
        if audience is not None and not self.budget.take():
            raise TokenError(f"too many new ID-token audiences at once (more than {self.budget.burst}, then "
                             f"{self.budget.rate:g} a second); {audience} was not minted, retry shortly",
                             "too_many_audiences")
        source = TokenSource(self._factory(credential, audience), label=_label(credential, audience))
        source.routing = self.routing
        assert self._configured is not None, "configure() first"
        source.configure(*self._configured)
        self._sources[key] = source
        while len(self._sources) > MAX_SOURCES:
            _, old = self._sources.popitem(last=False)
            old.close()
        return source

    def sources(self) -> list[TokenSource]:
        return [self.adc, *self._sources.values()]

    def by_credential(self) -> list[tuple[str, list[TokenSource]]]:
        """The sources made so far, grouped by the credential a route names: ``adc``, then each
        other credential's description (an ID token per host counts once, as
        ``ID token for audience https://HOST ...``). Metric labels: as many as the config has."""
        groups: dict[str, list[TokenSource]] = {"adc": [self.adc]}
        for (credential, _audience), source in self._sources.items():
            groups.setdefault(credential.describe(), []).append(source)
        return list(groups.items())

    def _factory(self, credential: Credential, audience: str | None) -> Any:
        adc = self.adc

        def adc_token() -> str:
            assert adc.cache is not None
            return adc.cache.get().value  # blocking, single-flight with every other ADC user

        def adc_loaded() -> Any:
            """The ADC credentials (loaded, with a token), so IAM refusals can name the caller."""
            adc_token()
            return adc.credentials

        if credential.kind == "impersonate":
            from addons.impersonation import ImpersonatedCredentials

            def impersonated(scopes: Sequence[str], transport: Any) -> Any:
                caller = principal(adc_loaded())
                return ImpersonatedCredentials(adc_token, credential.chain, scopes, caller=caller)
            return impersonated
        if credential.kind == "key_file":
            from addons.key_files import load_key_file

            path = credential.key_file or ""

            def key_file(scopes: Sequence[str], transport: Any) -> Any:
                return load_key_file(path, scopes, transport)
            return key_file
        if credential.kind == "id_token":
            from addons.id_tokens import id_token_credentials

            assert audience is not None

            def id_token(scopes: Sequence[str], transport: Any) -> Any:
                if credential.chain:  # minted by IAM as the chain's target, asked with the ADC token
                    return id_token_credentials(adc_loaded(), audience, source_token=adc_token,
                                                chain=credential.chain)
                # its own copy of the ADC credentials: an ID token grant does not share their state
                return id_token_credentials(load_credentials(scopes, transport), audience)
            return id_token
        raise ValueError(f"credential {credential.kind!r} has no token source")


def _label(credential: Credential, audience: str | None) -> str:
    if credential.kind == "id_token":
        return f"ID token for {audience}"
    return credential.describe()
