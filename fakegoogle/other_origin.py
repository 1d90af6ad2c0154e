"""ASGI app for the non-Google TLS origin: echoes what it received, minus credentials.

Any access or ID token this fake issued that arrives here is a leak (``leaks``).
"""

from __future__ import annotations

from .googleapis import record
from .http import App, Request, Response, json_response
from .state import SharedState
from .tokens import bearer_token


class OtherOriginApp(App):
    """Proves tunnelling: clients trusting only its own CA reach it unmodified."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    async def respond(self, request: Request) -> Response:
        for name, value in [("path", request.full_path), *request.headers.items()]:
            if self.state.tokens.found_in(value) or self.state.id_tokens.found_in(value):
                self.state.leaks.append(name)
        token = bearer_token(request.headers.get("authorization"))
        token_valid = token is not None and self.state.tokens.is_valid(token)
        headers = dict(request.headers)
        if "authorization" in headers:
            headers["authorization"] = "<present>"
        payload = {
            "server": "other",
            "method": request.method,
            "path": request.full_path,
            "http_version": request.http_version,
            "headers": headers,
            "body_bytes": request.body_bytes,
        }
        record(self.state, request, token_valid, "other")
        return json_response(200, payload)
