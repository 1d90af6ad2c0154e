"""ASGI app for the *.googleapis.com TLS origin: host routing, bearer-token check, recording."""

from __future__ import annotations

import logging
from typing import Any

from .compute import compute
from .http import (
    App,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    google_error,
    json_response,
)
from .iamcredentials import iamcredentials_endpoint
from .identity import CERTS_V1_PATH, CERTS_V3_PATH
from .oauth import token_endpoint
from .projects import bigquery, resource_manager
from .records import RecordedRequest
from .state import SharedState
from .storage_api import StorageApi
from .streaming import aiplatform, is_aiplatform, websocket_echo
from .sts import ENDPOINTS as STS_ENDPOINTS
from .sts import sts_endpoint
from .tokens import bearer_token

log = logging.getLogger(__name__)
DRAIN_LIMIT = (
    1 << 20
)  # read (and discard) rejected bodies up to this size to keep keep-alive working

STORAGE_ROOTS = ("storage", "upload", "download")
PLAIN_HANDLERS = {
    "compute": (compute,),
    "bigquery": (bigquery,),
    "resourcemanager": (resource_manager,),
    "www": (compute, bigquery),
}

UNAUTHENTICATED = {
    "error": {
        "code": 401,
        "message": "Request had invalid authentication credentials.",
        "status": "UNAUTHENTICATED",
    }
}


def service_for(host: str) -> str:
    """Which fake service answers for ``host`` (already lower-case, no port)."""
    if is_aiplatform(host):
        return "aiplatform"  # regional names too: us-central1-aiplatform.googleapis.com
    name = host.removesuffix(".googleapis.com")
    return {
        "oauth2": "oauth2",
        "storage": "storage",
        "www": "www",
        "compute": "compute",
        "bigquery": "bigquery",
        "cloudresourcemanager": "resourcemanager",
        "sts": "sts",
        "iamcredentials": "iamcredentials",
    }.get(name, "")


def echo_payload(request: Request, token_valid: bool, server: str) -> dict[str, Any]:
    """What /echo returns: everything received except the credential itself."""
    return {
        "server": server,
        "method": request.method,
        "path": request.full_path,
        "host": request.headers.get("host", ""),
        "http_version": request.http_version,
        "headers": {k: v for k, v in request.headers.items() if k != "authorization"},
        "authorization_present": "authorization" in request.headers,
        "token_valid": token_valid,
        "body_bytes": request.body_bytes,
    }


def signing_keys(path: str, state: SharedState) -> Response:
    """The ID-token keys: JWKS at /oauth2/v3/certs, ``kid`` -> PEM certificate at /oauth2/v1/certs."""
    keys = state.id_tokens.jwks() if path == CERTS_V3_PATH else state.id_tokens.x509_certs()
    return json_response(200, keys, headers=[("cache-control", "public, max-age=3600, must-revalidate, no-transform")])


def unauthenticated() -> Response:
    return json_response(
        401,
        UNAUTHENTICATED,
        headers=[("www-authenticate", 'Bearer realm="https://accounts.google.com/"')],
    )


def record(state: SharedState, request: Request, token_valid: bool, server: str) -> None:
    state.log.add(
        RecordedRequest(
            host=request.host,
            method=request.method,
            path=request.full_path,
            authorization=request.headers.get("authorization"),
            token_valid=token_valid,
            headers=request.headers,
            body_bytes=request.body_bytes,
            http_version=request.http_version,
            server=server,
        )
    )


class GoogleApisApp(App):
    """One ASGI app behind the wildcard certificate; dispatches on the Host header."""

    def __init__(self, state: SharedState) -> None:
        self.state = state
        self.storage = StorageApi(state.storage)

    drain_body = False  # routes read bodies themselves, so uploads stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await websocket_echo(scope, receive, send, self.state)  # checks the token on the upgrade
            return
        await super().__call__(scope, receive, send)

    def internal_error(self, request: Request) -> Response:
        log.exception("fakegoogle handler failed for %s %s", request.method, request.full_path)
        return google_error(500, "Internal error in fakegoogle.")

    async def respond(self, request: Request) -> Response:
        service = service_for(request.host)
        # Token endpoints are counted by the token store, not recorded as API requests.
        if service == "oauth2" and request.raw_path == "/token" and request.method == "POST":
            return await token_endpoint(request, self.state)
        if service == "sts" and request.raw_path in STS_ENDPOINTS and request.method == "POST":
            return await sts_endpoint(request, self.state)
        if service == "www" and request.method == "GET" and request.raw_path in (CERTS_V1_PATH, CERTS_V3_PATH):
            return signing_keys(request.raw_path, self.state)  # public, like Google's: no token needed
        if service == "iamcredentials" and (found := await iamcredentials_endpoint(request, self.state)):
            # Recorded like an API call: tests check what reached it (never the proxy's token).
            caller = bearer_token(request.headers.get("authorization"))
            record(self.state, request, caller is not None and self.state.tokens.is_valid(caller), "googleapis")
            return found
        token = bearer_token(request.headers.get("authorization"))
        token_valid = token is not None and self.state.tokens.is_valid(token)
        if request.raw_path == "/echo":
            await request.drain()
            response = json_response(200, echo_payload(request, token_valid, "googleapis"))
        elif not token_valid:
            if int(request.headers.get("content-length") or 0) <= DRAIN_LIMIT:
                await request.drain()
            response = unauthenticated()
        else:
            response = await self.dispatch(service, request) or google_error(
                404, f"Not Found: {request.method} {request.raw_path}", "notFound"
            )
        record(self.state, request, token_valid, "googleapis")
        return response

    async def dispatch(self, service: str, request: Request) -> Response | None:
        segments = request.segments
        if service == "storage" or (service == "www" and segments[0] in STORAGE_ROOTS):
            return await self.storage.handle(request)
        if service == "aiplatform":
            return await aiplatform(request, self.state)
        for handler in PLAIN_HANDLERS.get(service, ()):
            if (found := handler(request.method, segments)) is not None:
                return found
        return None
