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
from addons.errors import error_response
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
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}
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


def requested_host(flow: http.HTTPFlow) -> str | None:
    """The name the client asked for: the TLS server name for TLS, the request authority for plain HTTP.

    Not the Host header (a client can put anything there) and not ``request.host`` on TLS flows
    (an upstream address override rewrites it).
    """
    if flow.client_conn.tls:
        return flow.client_conn.sni
    return flow.request.host or None


class GoogleAuth:
    def __init__(self) -> None:
        self.patterns: list[hosts.HostPattern] = []
        self.client_auth = "keep"
        self.cache: TokenCache | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._transport: Any = None

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
        if self.cache.in_backoff() and self.cache.last_error is not None:
            raise self.cache.last_error
        return await asyncio.shield(self._start_refresh())

    # -- hooks ---------------------------------------------------------------------------------------

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        host = requested_host(flow)
        if not hosts.matches_any(host, self.patterns):
            return
        assert host is not None
        meta = flow.metadata.setdefault("gauth", {})
        meta["host"] = hosts.normalize_host(host)
        if not flow.client_conn.tls:
            # Plain http:// to an injected host: go upstream over TLS so the token never
            # crosses plaintext (the client's leg carries no token).
            flow.request.scheme = "https"
            flow.request.port = 443
            meta["upgraded"] = True
        if flow.request.scheme != "https":
            meta["auth"] = "none"
            return
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
        self.cache.invalidate(flow.request.headers.get("authorization", "").removeprefix("Bearer ").strip())
        try:
            token = await self.token()
        except TokenError as e:
            logger.warning("upstream rejected the token and no new one could be had: %s", e)
            return
        meta["token_id"] = token.fingerprint
        try:
            flow.response = await asyncio.to_thread(self._replay, flow, token)
        except Exception as e:  # noqa: BLE001 - any failure: the original 401 still goes to the client
            logger.warning("retry after 401 failed: %s", redact.redact_text(str(e), [token.value]))

    def _may_retry(self, flow: http.HTTPFlow) -> bool:
        meta = flow.metadata.get("gauth", {})
        return (
            meta.get("auth") == "injected"
            and not meta.get("retried")
            and not flow.request.stream
            and flow.request.raw_content is not None
        )

    def _replay(self, flow: http.HTTPFlow, token: Token) -> http.Response:
        """Send the request once more with a fresh token, through our own transport."""
        req = flow.request
        host = flow.metadata["gauth"]["host"]
        headers = {k: v for k, v in req.headers.items(multi=False) if k.lower() not in _HOP_BY_HOP}
        headers.pop("host", None)
        headers.pop(":authority", None)
        headers.update(token.headers)
        headers["host"] = req.host_header or host
        url = f"https://{host}:{req.port}{req.path}"
        session = self._transport.session
        upstream = session.request(
            req.method, url, headers=headers, data=req.raw_content, allow_redirects=False,
            stream=True, timeout=(10, 120),
        )
        try:
            body = upstream.raw.read(decode_content=False)
        finally:
            upstream.close()
        out_headers = [
            (k.encode(), v.encode("latin-1", "replace"))
            for k, v in upstream.raw.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
        ]
        resp = http.Response.make(upstream.status_code, b"", out_headers)
        resp.http_version = req.http_version
        resp.raw_content = body
        resp.headers["content-length"] = str(len(body))
        return resp


def _consume_exception(future: asyncio.Future[Token]) -> None:
    if not future.cancelled():
        future.exception()


addons = [GoogleAuth()]
