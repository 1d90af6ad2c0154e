"""Adds a cached Google access token to requests for injected hosts; nothing else is touched.

Load it alone with ``mitmdump -s addons/google_auth.py --set gauth_hosts='*.googleapis.com'``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import google.auth
from mitmproxy import ctx, exceptions, http

from addons import hosts, redact, token_transport
from addons.destination import Destinations, destination_of
from addons.errors import error_response
from addons.replay import REPLAY_MAX_BODY, ReplayTarget, TooLarge, replay, replay_headers
from addons.resolve import parse_resolve_rules
from addons.token_cache import Token, TokenCache, TokenError, credential_type, principal

logger = logging.getLogger(__name__)

DEFAULT_HOSTS = ("*.googleapis.com",)
DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
CLIENT_AUTH_MODES = ("keep", "replace", "reject")

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
    def __init__(self) -> None:
        self.patterns: list[hosts.HostPattern] = []
        self.client_auth = "keep"
        self.cache: TokenCache | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._transport: Any = None
        self._warned: set[str] = set()

    def load(self, loader: Any) -> None:
        loader.add_option(
            "gauth_hosts", Sequence[str], list(DEFAULT_HOSTS),
            "Hosts that get a Google token: exact names or *.suffix over whole labels.",
        )
        loader.add_option(
            "gauth_scopes", Sequence[str], list(DEFAULT_SCOPES), "OAuth scopes for the token.",
        )
        loader.add_option(
            "gauth_client_auth", str, "keep",
            "What to do with a request that brings its own Authorization: keep it, replace it "
            "with ours, or reject the request.",
            choices=CLIENT_AUTH_MODES,
        )

    def configure(self, updated: set[str]) -> None:
        if "gauth_hosts" in updated:
            try:
                self.patterns = [hosts.parse_host_pattern(p) for p in ctx.options.gauth_hosts]
            except ValueError as e:
                raise exceptions.OptionsError(str(e)) from e
        if "gauth_client_auth" in updated:
            self.client_auth = ctx.options.gauth_client_auth
        if updated & {"gauth_scopes", "upstream_resolve", "ssl_verify_upstream_trusted_ca"} or self.cache is None:
            self._build_cache()

    def _build_cache(self) -> None:
        options = ctx.options
        try:
            rules = parse_resolve_rules(options.upstream_resolve if "upstream_resolve" in options else [])
        except ValueError as e:
            raise exceptions.OptionsError(str(e)) from e
        ca_bundle = options.ssl_verify_upstream_trusted_ca or None
        scopes = list(options.gauth_scopes)
        self._transport = token_transport.make_request(rules, ca_bundle)

        def load_credentials() -> Any:
            creds, _project = google.auth.default(scopes=scopes, request=self._transport)
            return creds

        self.cache = TokenCache(load_credentials, self._transport)
        self.cache.on_change = self._log_state
        self._inflight = None

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning("%s", message)

    def _log_state(self, message: str) -> None:
        assert self.cache is not None
        creds = self.cache.credentials
        if creds is not None and message.startswith("token available"):
            logger.info("%s: %s credentials for %s", message, credential_type(creds), principal(creds) or "unknown principal")
        else:
            logger.warning("%s", message)

    def running(self) -> None:
        # Warm the cache so the first request does not wait and the log names the principal early.
        asyncio.get_running_loop().call_soon(self._start_refresh)

    # -- token access without blocking the event loop ------------------------------------------------

    def _start_refresh(self) -> asyncio.Future[Token]:
        assert self.cache is not None
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(asyncio.to_thread(self.cache.refresh))
            self._inflight.add_done_callback(_consume_exception)
            self._inflight.add_done_callback(self._retry_without_token)
        return self._inflight

    def _retry_without_token(self, future: asyncio.Future[Token]) -> None:
        """With no token at all, keep trying in the background (a metadata server still coming
        up, an outage), at the cache's backoff pace, so the first request after recovery works."""
        if future.cancelled() or future.exception() is None or self.cache is None:
            return
        if self.cache.current() is None and (self._retry is None or self._retry.cancelled()):
            def retry() -> None:
                self._retry = None
                self._start_refresh()

            self._retry = asyncio.get_running_loop().call_later(max(0.05, self.cache.retry_in()), retry)

    def done(self) -> None:
        if self._retry is not None:
            self._retry.cancel()

    async def token(self) -> Token:
        """A valid token; serves the cached one while a refresh runs in the background."""
        assert self.cache is not None
        token = self.cache.current()
        if token is not None:
            if self.cache.refresh_due() and not self.cache.in_backoff():
                self._start_refresh()
            return token
        if self.cache.in_backoff():
            raise self.cache.failure()  # a fresh exception each time: no traceback grows
        return await asyncio.shield(self._start_refresh())

    # -- hooks ---------------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        destination = destination_of(flow)
        if destination is None:
            self._warn_once("no token: addons/destination.py is not loaded, so no request's destination is known")
            return
        host = destination.host
        if not hosts.matches_any(host, self.patterns):
            return
        meta = flow.metadata.setdefault("gauth", {})
        meta["host"] = host
        if not destination.tokenable:
            # An injected name on a path a token may not take (host confusion, TLS to the proxy
            # port): refuse rather than forward, so nothing reaches a front end that routes by name.
            meta["auth"] = "denied"
            meta["error"] = f"misdirected request: {destination.reason}"
            logger.warning("refused a misdirected request for %s: %s", host, destination.reason)
            flow.response = error_response(
                421, f"gcp-auth-proxy adds credentials only when the request, its TLS server name and "
                f"its CONNECT target all name the same host: {destination.reason}.", "misdirectedRequest",
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
        if "authorization" in flow.request.headers:
            if self.client_auth == "keep":
                meta["auth"] = "client"
                return
            if self.client_auth == "reject":
                meta["auth"] = "denied"
                flow.response = error_response(
                    403, "This proxy adds credentials itself; requests must not carry an Authorization header.",
                    "clientAuthorizationRejected",
                )
                return
            del flow.request.headers["authorization"]
        try:
            token = await self.token()
        except TokenError as e:
            meta["auth"] = "failed"
            meta["error"] = str(e)
            flow.response = error_response(
                502, f"gcp-auth-proxy could not get a Google access token: {e}", e.reason
            )
            return
        if not flow.live:
            return
        for name, value in token.headers.items():
            if name == "authorization" or name not in flow.request.headers:
                flow.request.headers[name] = value
        meta["auth"] = "injected"
        meta["token_id"] = token.fingerprint
        meta["principal"] = principal(self.cache.credentials if self.cache else None)
        if "x-goog-user-project" in flow.request.headers:
            meta["quota_project"] = flow.request.headers["x-goog-user-project"]

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response and flow.response.status_code == 401 and self._may_retry(flow):
            flow.response.stream = False  # keep the small 401 body so we can replace it

    async def response(self, flow: http.HTTPFlow) -> None:
        if not (flow.response and flow.response.status_code == 401 and self._may_retry(flow)):
            return
        assert self.cache is not None
        meta = flow.metadata["gauth"]
        meta["retried"] = True
        # Only the token we injected, and only while it is the current one: a 401 cannot make
        # the cache drop a token it has already replaced.
        self.cache.invalidate(flow.request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        try:
            token = await self.token()
        except TokenError as e:
            logger.warning("upstream rejected the token and no new one could be had: %s", e)
            return
        meta["token_id"] = token.fingerprint
        target = self._replay_target(flow)
        if target is None:
            return
        options = ctx.options
        try:
            answer = await asyncio.to_thread(
                replay, target, flow.request.method, flow.request.path,
                replay_headers(flow.request.headers.items(multi=True), token.headers, target),
                flow.request.raw_content or b"",
                ca_bundle=options.ssl_verify_upstream_trusted_ca or None,
                connect_timeout=_option(options, "limits_connect_timeout", 10.0),
                read_timeout=_option(options, "limits_read_timeout", 120.0),
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

    def _may_retry(self, flow: http.HTTPFlow) -> bool:
        meta = flow.metadata.get("gauth", {})
        body = flow.request.raw_content
        return (
            meta.get("auth") == "injected"
            and not meta.get("retried")
            and not flow.request.stream
            and body is not None
            and len(body) <= REPLAY_MAX_BODY
        )

    @staticmethod
    def _replay_target(flow: http.HTTPFlow) -> ReplayTarget | None:
        """The validated destination and the exact peer the first attempt reached, or None."""
        destination = destination_of(flow)
        peer = flow.server_conn.peername
        if destination is None or not destination.tokenable or peer is None or not flow.server_conn.tls:
            return None
        port = 443 if destination.plain else destination.port  # plain http:// went upstream over TLS
        return ReplayTarget(destination.host, port, (str(peer[0]), int(peer[1])))


def _option(options: Any, name: str, default: float) -> float:
    return float(getattr(options, name)) if name in options else default


def _consume_exception(future: asyncio.Future[Token]) -> None:
    if not future.cancelled():
        future.exception()


addons = [Destinations(), GoogleAuth()]  # -s loads both: no token without a known destination
