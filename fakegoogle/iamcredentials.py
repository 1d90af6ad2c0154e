"""iamcredentials.googleapis.com ``serviceAccounts/SA:generateAccessToken`` and ``:generateIdToken``.

Both authenticate the caller's bearer token (one this fake issued, still valid: else 401), then
walk the delegation chain caller -> delegates... -> SA: every account must exist (404) and each
hop's source must hold "Service Account Token Creator" on its destination (403, in Google's
PERMISSION_DENIED shape). Accounts the federation registered as impersonable are open to any
valid caller. Answers are an ordinary access token (valid at the fake APIs, issued for the SA)
or a Google-signed ID token.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

from .http import Request, Response, google_error, json_response
from .iam_policy import chain_loop, first_denied_hop
from .metadata import SA_EMAIL as METADATA_SA
from .state import SharedState
from .token_failures import failure_response
from .tokens import bearer_token

PATH = re.compile(
    r"^/v1/projects/-/serviceAccounts/(?P<email>[^/:]+):(?P<method>generateAccessToken|generateIdToken)$"
)
DURATION = re.compile(r"^(\d+)(?:\.\d+)?s$")
DELEGATE_PREFIX = "projects/-/serviceAccounts/"
ENDPOINTS = {"generateAccessToken": "generate_access_token", "generateIdToken": "generate_id_token"}
PERMISSIONS = {
    "generateAccessToken": "iam.serviceAccounts.getAccessToken",
    "generateIdToken": "iam.serviceAccounts.getOpenIdToken",
}


class Refusal(Exception):
    """A request iamcredentials turns down; carries the response to send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def invalid(message: str) -> Refusal:
    return Refusal(google_error(400, message, "badRequest", "INVALID_ARGUMENT"))


def permission_denied(permission: str) -> Response:
    """Exactly what Google sends when a hop of the chain lacks the Token Creator role."""
    return json_response(403, permission_denied_body(permission))


def permission_denied_body(permission: str) -> dict[str, Any]:
    """IAM Credentials' JSON body for a missing ``permission`` (also what unit tests stub with)."""
    return {"error": {
        "code": 403,
        "message": f"Permission '{permission}' denied on resource (or it may not exist).",
        "status": "PERMISSION_DENIED",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "iam.googleapis.com",
            "metadata": {"permission": permission},
        }],
    }}


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise invalid("Invalid JSON payload received.") from None
    if not isinstance(payload, dict):
        raise invalid("Invalid JSON payload received.")
    return payload


def parse_delegates(payload: dict[str, Any]) -> list[str]:
    """Delegate emails from ``projects/-/serviceAccounts/EMAIL`` names (bare emails accepted)."""
    delegates = payload.get("delegates") or []
    if not isinstance(delegates, list) or not all(isinstance(d, str) for d in delegates):
        raise invalid("Invalid value at 'delegates'.")
    emails = []
    for name in delegates:
        email = name.removeprefix(DELEGATE_PREFIX)
        if "/" in email or "@" not in email:
            raise invalid(f"Invalid form of delegate: {name}. Should be {DELEGATE_PREFIX}{{ACCOUNT_EMAIL_OR_UNIQUEID}}.")
        emails.append(email)
    return emails


def authorize(method: str, target: str, caller_token: str | None, delegates: list[str], state: SharedState) -> None:
    """Raise Refusal unless the caller may act as ``target`` through ``delegates``."""

    def exists(email: str) -> bool:
        return (state.iam.knows(email) or state.federation.can_impersonate(email)
                or state.credentials.has_service_account(email) or email.lower() == METADATA_SA)

    def may_act_as(source: str | None, destination: str) -> bool:
        return state.federation.can_impersonate(destination) or state.iam.allows(source, destination)

    for email in [*delegates, target]:
        if not exists(email):
            raise Refusal(google_error(404, f"Not found; Gaia id not found for email {email}", "notFound", "NOT_FOUND"))
    if (repeated := chain_loop(delegates, target)) is not None:
        raise invalid(f"Invalid delegation chain: {repeated} appears more than once.")
    caller = state.tokens.principal_of(caller_token) if caller_token else None
    if first_denied_hop(caller, delegates, target, may_act_as) is not None:
        raise Refusal(permission_denied(PERMISSIONS[method]))


def generate_access_token(target: str, payload: dict[str, Any], state: SharedState) -> Response:
    scope = payload.get("scope")
    if not isinstance(scope, list) or not scope:
        raise invalid("Scope required.")
    lifetime = None
    if isinstance(payload.get("lifetime"), str):
        match = DURATION.match(payload["lifetime"])
        if match is None:
            raise invalid("Invalid value at 'lifetime'.")
        lifetime = int(match.group(1))
    issued, expires_in = state.tokens.issue("iamcredentials", lifetime, principal=target)
    expire_time = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=expires_in)
    return json_response(200, {"accessToken": issued, "expireTime": expire_time.strftime("%Y-%m-%dT%H:%M:%SZ")})


def generate_id_token(target: str, payload: dict[str, Any], state: SharedState) -> Response:
    audience = payload.get("audience")
    if not isinstance(audience, str) or not audience:
        raise invalid("Audience is required.")
    include_email = payload.get("includeEmail", False)
    if not isinstance(include_email, bool):
        raise invalid("Invalid value at 'include_email'.")
    token = state.id_tokens.mint(audience, target, include_email=include_email, lifetime=state.tokens.lifetime)
    return json_response(200, {"token": token})


def respond(method: str, target: str, authorization: str | None, body: bytes, state: SharedState) -> Response:
    token = bearer_token(authorization)
    if token is None or not state.tokens.is_valid(token):
        return google_error(401, "Request had invalid authentication credentials.", "authError", "UNAUTHENTICATED")
    try:
        payload = parse_body(body)
        delegates = parse_delegates(payload)
        if method == "generateAccessToken" and not isinstance(payload.get("scope"), list):
            raise invalid("Scope required.")
        authorize(method, target, token, delegates, state)
        if method == "generateIdToken":
            return generate_id_token(target, payload, state)
        return generate_access_token(target, payload, state)
    except Refusal as refusal:
        return refusal.response


async def iamcredentials_endpoint(request: Request, state: SharedState) -> Response | None:
    """POST .../serviceAccounts/SA:generateAccessToken or :generateIdToken, or None for any other path."""
    match = PATH.match(request.raw_path.replace("%40", "@"))
    if request.method != "POST" or match is None:
        return None
    method = match.group("method")
    state.tokens.count_request(ENDPOINTS[method])
    body = await request.body()
    failure = await failure_response(state.tokens, state.stopping)
    if failure is not None:
        return failure
    return respond(method, match.group("email"), request.headers.get("authorization"), body, state)
