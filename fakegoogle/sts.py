"""sts.googleapis.com: RFC 8693 token exchange (/v1/token) and workforce refresh (/v1/oauthtoken).

Errors use the OAuth shape (``error``, ``error_description``) with the codes the real service
sends, so google-auth raises what it would raise against Google.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl

from .federation import (
    AUDIENCE,
    SUBJECT_TOKEN_TYPES,
    WORKFORCE_SUBJECT,
    federated_principal,
    workforce_principal,
)
from .http import Request, Response, json_response
from .jwt_verify import GrantError
from .state import SharedState
from .token_failures import failure_response

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
NO_STORE = [("cache-control", "no-store"), ("pragma", "no-cache")]


def _error(error: str, description: str) -> Response:
    return json_response(400, {"error": error, "error_description": description})


def _basic_auth(header: str | None) -> tuple[str, str]:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        client_id, _, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    return client_id, secret


def exchange(form: dict[str, str], state: SharedState) -> Response:
    """Check one token-exchange request; answer with a federated access token or an OAuth error."""
    if form.get("grant_type") != TOKEN_EXCHANGE:
        return _error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
    if form.get("requested_token_type") != ACCESS_TOKEN_TYPE:
        return _error("invalid_request", "Invalid requested_token_type.")
    if form.get("subject_token_type") not in SUBJECT_TOKEN_TYPES:
        return _error("invalid_request", "Unsupported subject_token_type.")
    if form.get("audience") != AUDIENCE:
        return _error(
            "invalid_target",
            'The target service indicated by the "audience" parameters is invalid. This might '
            "either be because the pool or provider is disabled or deleted or because it doesn't exist.",
        )
    if not form.get("scope", "").split():
        return _error("invalid_scope", "Scope(s) must be provided.")
    try:
        claims = state.federation.verify_subject_token(form.get("subject_token", ""))
    except GrantError as exc:
        return _error("invalid_grant", str(exc))
    token, expires_in = state.tokens.issue("sts", principal=federated_principal(claims["sub"]))
    return json_response(
        200,
        {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
         "expires_in": expires_in},
        headers=NO_STORE,
    )


def refresh(form: dict[str, str], authorization: str | None, state: SharedState) -> Response:
    """A workforce user's refresh_token grant, client authenticated with HTTP Basic."""
    if form.get("grant_type") != "refresh_token":
        return _error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
    client_id, secret = _basic_auth(authorization)
    if state.federation.workforce_user(client_id, secret, form.get("refresh_token", "")) is None:
        return _error("invalid_grant", "The refresh token is invalid or expired.")
    token, expires_in = state.tokens.issue("sts_refresh", principal=workforce_principal(WORKFORCE_SUBJECT))
    return json_response(
        200, {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}, headers=NO_STORE
    )


ENDPOINTS = {"/v1/token": "sts_exchange", "/v1/oauthtoken": "sts_refresh"}


async def sts_endpoint(request: Request, state: SharedState) -> Response:
    """POST /v1/token or /v1/oauthtoken; honours the injected token failure mode."""
    endpoint = ENDPOINTS[request.raw_path]
    state.tokens.count_request(endpoint)
    body = await request.body()
    failure = await failure_response(state.tokens, state.stopping)
    if failure is not None:
        return failure
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if endpoint == "sts_exchange":
        return exchange(form, state)
    return refresh(form, request.headers.get("authorization"), state)
