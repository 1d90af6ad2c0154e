"""oauth2.googleapis.com POST /token: jwt-bearer and refresh_token grants."""

from __future__ import annotations

from urllib.parse import parse_qsl

from .http import Request, Response, json_response
from .jwt_verify import GrantError, verify_assertion
from .state import SharedState
from .token_failures import failure_response

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def _error(status: int, error: str, description: str) -> Response:
    return json_response(status, {"error": error, "error_description": description})


def grant_scope(form: dict[str, str], state: SharedState) -> str:
    """Validate the grant in ``form``; return the granted scope or raise GrantError."""
    grant_type = form.get("grant_type", "")
    if grant_type == JWT_BEARER:
        claims = verify_assertion(form.get("assertion", ""), state.credentials.key)
        return str(claims.get("scope") or form.get("scope") or DEFAULT_SCOPE)
    if grant_type == "refresh_token":
        user = state.credentials.user(
            form.get("client_id", ""), form.get("client_secret", ""), form.get("refresh_token", "")
        )
        if user is None:
            raise GrantError("Bad Request")
        return form.get("scope") or DEFAULT_SCOPE
    raise ValueError(f"Invalid grant_type: {grant_type}")


async def token_endpoint(request: Request, state: SharedState) -> Response:
    """Issue an access token for a valid grant; honours the injected failure mode."""
    state.tokens.count_request()
    body = await request.body()
    failure = await failure_response(state.tokens, state.stopping)
    if failure is not None:
        return failure
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    try:
        scope = grant_scope(form, state)
    except GrantError as exc:
        return _error(400, "invalid_grant", str(exc))
    except ValueError as exc:
        return _error(400, "unsupported_grant_type", str(exc))
    token, expires_in = state.tokens.issue()
    return json_response(
        200,
        {"access_token": token, "expires_in": expires_in, "token_type": "Bearer", "scope": scope},
        headers=[
            ("cache-control", "no-cache, no-store, max-age=0, must-revalidate"),
            ("pragma", "no-cache"),
        ],
    )
