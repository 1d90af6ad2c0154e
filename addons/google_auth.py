"""Adds a cached Google access token to requests for injected hosts; nothing else is touched.

Load it alone with ``mitmdump -s addons/google_auth.py --set inject_host='*.googleapis.com'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx, exceptions, http

from addons import google_api, hosts, options, redact
from addons.destination import Destinations, destination_of
from addons.errors import error_response
from addons.proxy_auth import proxy_user_of
from addons.replay import REPLAY_MAX_BODY, ReplayTarget, TooLarge, Tunnel, replay, replay_headers
from addons.resolve import parse_resolve_rules
from addons.routing import Routing
from addons.streaming import REPLAY_PENDING
from addons.token_cache import Token, TokenCache, TokenError
from addons.token_source import TokenSource
from addons.token_sources import TokenSources

if TYPE_CHECKING:
    from addons.upstream_proxy import Carried

logger = logging.getLogger(__name__)

GRPC_UNAUTHENTICATED = 16
# Token failures that are a refusal (IAM said no), not an outage: the client gets 403, not 502.
_REFUSALS = frozenset({"impersonation_denied", "id_token_unsupported"})

DEFAULT_HOSTS = options.DEFAULT_INJECT_HOSTS

# Requests to these obtain tokens; a bearer token there is never ours to add.
_TOKEN_ENDPOINTS = (
    ("oauth2.googleapis.com", "/"),
    ("sts.googleapis.com", "/"),
    ("accounts.google.com", "/"),
    ("www.googleapis.com", "/oauth2/"),
    ("iamcredentials.googleapis.com", "/v1/projects/-/serviceAccounts/"),
)


def is_token_endpoint(host: str, path: str) -> bool:
    """Google's own token services: oauth2, sts, and iamcredentials generateAccessToken/IdToken."""
    host = hosts.normalize_host(host)
    for name, prefix in _TOKEN_ENDPOINTS:
        if host == name and path.startswith(prefix):
            if name == "iamcredentials.googleapis.com":
                return ":generate" in path or ":sign" in path
            return True
    return False


class GoogleAuth:
    """Decides which request gets which credential and adds it; tokens come from TokenSources.

    The route (addons/policy_model.py) picks the credential: ADC, an impersonated service
    account, an ID token, a key file, or none. Shared ``sources`` and ``routing`` come from the
    composition root; made here when loaded alone (``mitmdump -s``).
    """

    def __init__(self, source: TokenSource | TokenSources | None = None, routing: Routing | None = None,
                 carried: Mapping[connection.Server, Carried] | None = None) -> None:
        # --upstream-proxy: how each tunnelled connection went (UpstreamProxy.carried), so a 401
        # replay can take the same way.
        self.carried: Mapping[connection.Server, Carried] = carried if carried is not None else {}
        if isinstance(source, TokenSources):
            self.sources = source
        else:
            self.sources = TokenSources(source)
        self._owns_routing = routing is None
        self.routing = routing if routing is not None else Routing()
        self.client_auth = "keep"
        self._warned: set[str] = set()

    @property
    def source(self) -> TokenSource:
        """The ADC source (what /readyz and /metrics report on)."""
        return self.sources.adc

    @property
    def cache(self) -> TokenCache | None:
        return self.source.cache

    @cache.setter
    def cache(self, cache: TokenCache) -> None:  # tests swap in a cache over fake credentials
        self.source.cache = cache

    def load(self, loader: Any) -> None:
        options.declare(loader, "scopes", "client_auth")
        if self._owns_routing:
            self.routing.load(loader)

    def configure(self, updated: set[str]) -> None:
        if self._owns_routing:
            self.routing.configure(updated)
        if "client_auth" in updated:
            self.client_auth = ctx.options.client_auth
        if updated & {"scopes", "resolve", "ssl_verify_upstream_trusted_ca"} or self.cache is None:
            options = ctx.options
            try:
                rules = parse_resolve_rules(options.resolve if "resolve" in options else [])
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
            self.sources.configure(options.scopes, rules, options.ssl_verify_upstream_trusted_ca or None)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("%s", message)

    def running(self) -> None:
        self.source.start()

    def done(self) -> None:
        self.sources.close()

    async def token(self) -> Token:
        return await self.source.token()

    # -- hooks ---------------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        destination = destination_of(flow)
        if destination is None:
            self._warn_once("no token: addons/destination.py is not loaded, so no request's destination is known")
            return
        host = destination.host
        route = self.routing.policy.route_for(host, flow.request.path, proxy_user_of(flow))
        if route is None:
            return
        meta = flow.metadata.setdefault("gauth", {})
        meta["host"] = host
        meta["route"] = route.name
        meta["credential"] = route.credential.label
        if not route.credential.injects:
            meta["auth"] = "none"
            return
        if not destination.tokenable:
            # An injected name on a path a token may not take (host confusion, TLS to the proxy
            # port): refuse rather than forward, so nothing reaches a front end that routes by name.
            meta["auth"] = "denied"
            meta["error"] = f"misdirected request: {destination.reason}"
            logger.warning("refused a misdirected request for %s: %s", host, destination.reason)
            flow.response = error_response(
                421, f"gcp-auth-proxy adds credentials only when the request, its TLS server name and "
                f"its CONNECT target all name the same host: {destination.reason}.", "misdirectedRequest", request=flow.request,
            )
            return
        if ctx.options.ssl_insecure:
            meta["auth"] = "none"
            self._warn_once("no token: upstream certificate checks are off (ssl_insecure)")
            return
        if destination.plain:
            # Plain http:// to an injected host: go upstream over TLS to the same name so the token
            # never crosses plaintext (the client's leg carries no token).
            flow.request.scheme = "https"
            flow.request.port = 443
            meta["upgraded"] = True
        if is_token_endpoint(host, flow.request.path):
            meta["auth"] = "none"
            return
        id_token = route.credential.kind == "id_token"
        header = "authorization"
        if "authorization" in flow.request.headers:
            if self.client_auth == "keep":
                if not id_token:
                    meta["auth"] = "client"
                    return
                header = "x-serverless-authorization"  # Cloud Run's convention: the app keeps its own
            elif self.client_auth == "reject":
                meta["auth"] = "denied"
                flow.response = error_response(
                    403, "This proxy adds credentials itself; requests must not carry an Authorization header.",
                    "clientAuthorizationRejected", request=flow.request,
                )
                return
            else:
                del flow.request.headers["authorization"]
        if id_token:
            flow.request.headers.pop("x-serverless-authorization", None)  # ours, or none at all
        try:
            source = self.sources.source_for(route.credential, host, flow.request.path)
            token = await source.token()
        except TokenError as e:
            meta["auth"] = "failed"
            meta["error"] = str(e)
            what = "an ID token" if id_token else "a Google access token"
            flow.response = error_response(
                403 if e.reason in _REFUSALS else 429 if e.reason == "too_many_audiences" else 502,
                f"gcp-auth-proxy could not get {what} for this request: {e}", e.reason, request=flow.request,
            )
            return
        if not flow.live:
            return
        if header == "authorization":
            for name, value in token.headers.items():
                if name == "authorization" or name not in flow.request.headers:
                    flow.request.headers[name] = value
        else:
            flow.request.headers[header] = f"Bearer {token.value}"
        meta["auth"] = "injected"
        meta["token_id"] = token.fingerprint
        meta["principal"] = source.principal
        meta["source"] = source
        if "x-goog-user-project" in flow.request.headers:
            meta["quota_project"] = flow.request.headers["x-goog-user-project"]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not (flow.response and flow.response.status_code == 401 and self._carried_our_token(flow)):
            return
        # Forget the rejected token before the 401 can reach the client, so its own retry (or our
        # replay) gets a fresh one: a streamed 401 may be at the client before `response` runs.
        # Only the token we injected, and only while it is the current one: a 401 cannot make the
        # cache drop a token it has already replaced.
        self._invalidate(flow)
        if self._may_retry(flow):
            # Keep the small 401 body so we can replace it; Streaming leaves a marked answer whole.
            flow.metadata["gauth"][REPLAY_PENDING] = True
            flow.response.stream = False

    async def response(self, flow: http.HTTPFlow) -> None:
        meta = flow.metadata.get("gauth", {})
        if (flow.response is not None and self._carried_our_token(flow)
                and google_api.grpc_status(flow.response.trailers, flow.response.headers) == GRPC_UNAUTHENTICATED):
            # gRPC says "bad token" with HTTP 200 and grpc-status 16: the 401 path never sees it.
            # Forget the token so the client library's own retry gets a fresh one.
            self._invalidate(flow)
            return
        if not (flow.response and flow.response.status_code == 401 and meta.get(REPLAY_PENDING)):
            return
        if flow.response.stream:
            return  # the 401 outgrew mitmproxy's buffer and went to the client: too late to replace
        meta["retried"] = True
        source = meta.get("source") or self.source
        try:
            token = await source.token()
        except TokenError as e:
            logger.warning("upstream rejected the token and no new one could be had: %s", e)
            return
        target = self._replay_target(flow)
        if target is None:
            return
        meta["token_id"] = token.fingerprint
        options = ctx.options
        try:
            answer = await asyncio.to_thread(
                replay, target, flow.request.method, flow.request.path,
                replay_headers(flow.request.headers.items(multi=True), token.headers, target),
                flow.request.raw_content or b"",
                ca_bundle=options.ssl_verify_upstream_trusted_ca or None,
                connect_timeout=_option(options, "connect_timeout", 10.0),
                read_timeout=_option(options, "read_timeout", 120.0),
            )
        except TooLarge:
            logger.warning("retry after 401 not buffered (answer too large); the client gets the 401")
            return
        except Exception as e:  # noqa: BLE001 - any failure: the original 401 still goes to the client
            logger.warning("retry after 401 failed: %s", redact.redact_text(str(e), [token.value]))
            return
        resp = http.Response.make(answer.status, answer.body, answer.headers)
        resp.http_version = flow.request.http_version
        resp.headers["content-length"] = str(len(answer.body))
        flow.response = resp

    def _invalidate(self, flow: http.HTTPFlow) -> None:
        """Forget the token this request carried, in the source it came from."""
        meta = flow.metadata.get("gauth", {})
        source = meta.get("source") or self.source
        headers = flow.request.headers
        value = headers.get("x-serverless-authorization") if meta.get("credential") == "id_token" and \
            "x-serverless-authorization" in headers else headers.get("authorization", "")
        source.invalidate((value or "").removeprefix("Bearer ").strip())

    @staticmethod
    def _carried_our_token(flow: http.HTTPFlow) -> bool:
        meta = flow.metadata.get("gauth", {})
        return meta.get("auth") == "injected" and not meta.get("retried")

    def _may_retry(self, flow: http.HTTPFlow) -> bool:
        """The request is held whole, small, and its answer will not be a stream: it can be replayed."""
        body = flow.request.raw_content
        return (
            self._carried_our_token(flow)
            and flow.metadata["gauth"].get("credential") != "id_token"  # its header may not be Authorization
            and not flow.request.stream
            and body is not None
            and len(body) <= REPLAY_MAX_BODY
            and not answers_with_a_stream(flow.request)
        )

    def _replay_target(self, flow: http.HTTPFlow) -> ReplayTarget | None:
        """The validated destination and the exact peer the first attempt reached (through the
        upstream proxy: the proxy's address and the same CONNECT target), or None."""
        destination = destination_of(flow)
        peer = flow.server_conn.peername
        tunnel = None
        carried = self.carried.get(flow.server_conn)
        if carried is not None:
            peer, tunnel = carried.carrier.peername, Tunnel(carried.proxy, carried.target)
        if destination is None or not destination.tokenable or peer is None or not flow.server_conn.tls:
            return None
        port = 443 if destination.plain else destination.port  # plain http:// went upstream over TLS
        return ReplayTarget(destination.host, port, (str(peer[0]), int(peer[1])), tunnel)


def answers_with_a_stream(request: http.Request) -> bool:
    """The answer will be a stream the replay would have to hold whole: server-sent events
    (``alt=sse``, ``Accept: text/event-stream``), gRPC, a protocol upgrade (WebSocket). Such a
    request is not replayed; its client gets the 401 and its own retry the fresh token."""
    headers = request.headers
    return (
        "upgrade" in headers
        or headers.get("content-type", "").lower().startswith("application/grpc")
        or "text/event-stream" in headers.get("accept", "").lower()
        or request.query.get("alt", "").lower() == "sse"
    )


def _option(options: Any, name: str, default: float) -> float:
    return float(getattr(options, name)) if name in options else default


addons = [Destinations(), GoogleAuth()]  # -s loads both: no token without a known destination
