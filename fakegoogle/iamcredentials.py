"""iamcredentials.googleapis.com ``serviceAccounts/SA:generateAccessToken`` (impersonation).

Any valid token this fake issued (a federated STS token, a user's or a service account's) may
impersonate a service account the fake registered as impersonable; the answer is an ordinary
access token, valid at the fake APIs.
"""

from __future__ import annotations

import datetime
import json
import re

from .http import Request, Response, google_error, json_response
from .state import SharedState
from .token_failures import failure_response
from .tokens import bearer_token

PATH = re.compile(r"^/v1/projects/-/serviceAccounts/(?P<email>[^/:]+):generateAccessToken$")
DURATION = re.compile(r"^(\d+)(?:\.\d+)?s$")


def generate_access_token(email: str, authorization: str | None, body: bytes, state: SharedState) -> Response:
    token = bearer_token(authorization)
    if token is None or not state.tokens.is_valid(token):
        return google_error(401, "Request had invalid authentication credentials.", "authError", "UNAUTHENTICATED")
    if not state.federation.can_impersonate(email):
        return google_error(404, f"Not found; Gaia id not found for email {email}", "notFound", "NOT_FOUND")
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        return google_error(400, "Invalid JSON payload received.", "badRequest", "INVALID_ARGUMENT")
    scope = payload.get("scope") if isinstance(payload, dict) else None
    if not isinstance(scope, list) or not scope:
        return google_error(400, "Scope required.", "badRequest", "INVALID_ARGUMENT")
    lifetime = None
    if isinstance(payload.get("lifetime"), str):
        match = DURATION.match(payload["lifetime"])
        if match is None:
            return google_error(400, "Invalid value at 'lifetime'.", "badRequest", "INVALID_ARGUMENT")
        lifetime = int(match.group(1))
    issued, expires_in = state.tokens.issue("iamcredentials", lifetime)
    expire_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
    return json_response(200, {"accessToken": issued, "expireTime": expire_time.strftime("%Y-%m-%dT%H:%M:%SZ")})


async def iamcredentials_endpoint(request: Request, state: SharedState) -> Response | None:
    """POST .../serviceAccounts/SA:generateAccessToken, or None for any other path."""
    match = PATH.match(request.raw_path.replace("%40", "@"))
    if request.method != "POST" or match is None:
        return None
    state.tokens.count_request("generate_access_token")
    body = await request.body()
    failure = await failure_response(state.tokens, state.stopping)
    if failure is not None:
        return failure
    return generate_access_token(match.group("email"), request.headers.get("authorization"), body, state)
