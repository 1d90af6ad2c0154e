"""oauth2.googleapis.com POST /token: jwt-bearer and refresh_token grants.

A service account's signed assertion that carries ``target_audience`` asks for an ID token
instead of an access token (google-auth's ``service_account.IDTokenCredentials``); the answer is
then ``{"id_token": ...}`` alone, as Google sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from .http import Request, Response, json_response
from .jwt_verify import GrantError, parse_rs256, verify_assertion
from .state import SharedState
from .token_failures import failure_response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
NO_CACHE = [
    ("cache-control", "no-cache, no-store, max-age=0, must-revalidate"),
    ("pragma", "no-cache"),
]


@dataclass(frozen=True)
class Grant:
    """What a valid grant entitles to: whose token, which scope, or an ID token's audience."""

    principal: str
    scope: str
    target_audience: str | None = None


def _error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description})


def asks_for_id_token(form: dict[str, str]) -> bool:
    """Whether the (not yet verified) assertion carries ``target_audience``: only for counting."""
    if form.get("grant_type") != JWT_BEARER:
        return False
    try:
        return bool(parse_rs256(form.get("assertion", "")).claims.get("target_audience"))
    except GrantError:
        return False


def check_grant(form: dict[str, str], state: SharedState) -> Grant:
    """Validate the grant in ``form``; raise GrantError (bad grant) or ValueError (bad type)."""
    grant_type = form.get("grant_type", "")
    if grant_type == JWT_BEARER:
        claims = verify_assertion(form.get("assertion", ""), state.credentials.key)
        audience = claims.get("target_audience")
        return Grant(
            principal=str(claims.get("iss")),
            scope=str(claims.get("scope") or form.get("scope") or DEFAULT_SCOPE),
            target_audience=str(audience) if audience else None,
        )
    if grant_type == "refresh_token":
        user = state.credentials.user(
            form.get("client_id", ""), form.get("client_secret", ""), form.get("refresh_token", "")
        )
        if user is None:
            raise GrantError("Bad Request")
        return Grant(principal=user.account, scope=form.get("scope") or DEFAULT_SCOPE)
    raise ValueError(f"Invalid grant_type: {grant_type}")


async def token_endpoint(request: Request, state: SharedState) -> Response:
    """Issue an access (or ID) token for a valid grant; honours the injected failure mode."""
    body = await request.body()
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    state.tokens.count_request("oauth2_id_token" if asks_for_id_token(form) else "oauth2")
    failure = await failure_response(state.tokens, state.stopping)
    if failure is not None:
        return failure
    try:
        grant = check_grant(form, state)
    except GrantError as exc:
        return _error(400, "invalid_grant", str(exc))
    except ValueError as exc:
        return _error(400, "unsupported_grant_type", str(exc))
    if grant.target_audience is not None:
        id_token = state.id_tokens.mint(grant.target_audience, grant.principal, lifetime=state.tokens.lifetime)
        return json_response(200, {"id_token": id_token}, headers=NO_CACHE)
    token, expires_in = state.tokens.issue(principal=grant.principal)
    return json_response(
        200,
        {"access_token": token, "expires_in": expires_in, "token_type": "Bearer", "scope": grant.scope},
        headers=NO_CACHE,
    )
