"""ASGI app for a Cloud Run-like TLS origin serving every ``*.a.run.app`` host (and, with the
audience rule of 1st-gen Cloud Functions, every ``*.cloudfunctions.net`` host).

Like Cloud Run's front end it wants a Google-signed ID token: from ``X-Serverless-Authorization:
Bearer`` when that header is present (then ``Authorization`` reaches the app untouched), else from
``Authorization: Bearer``. No token: 403; a bad, expired or wrong-audience token: 401; a caller
missing from the host's invokers: 403, with Cloud Run's HTML bodies. On success the "app" echoes
what it saw. An access token (``ya29.``) must never reach Cloud Run: any this fake issued that
arrives anywhere in a request is recorded in ``leaks``.
"""

from __future__ import annotations

import html
from typing import Any

from .googleapis import record
from .http import App, Request, Response, json_response, text_response
from .run_access import is_run_host
from .state import SharedState
from .tokens import bearer_token

SERVERLESS_AUTHORIZATION = "x-serverless-authorization"
INVALID_TOKEN = [
    ("www-authenticate", 'Bearer error="invalid_token" error_description="The access token could not be verified"'),
]


def error_page(status: int, title: str, heading: str, message: str) -> Response:
    """Google front end's HTML error page."""
    page = (
        "\n<html><head>\n<meta http-equiv=\"content-type\" content=\"text/html;charset=utf-8\">\n"
        f"<title>{status} {title}</title>\n</head>\n<body text=#000000 bgcolor=#ffffff>\n"
        f"<h1>Error: {heading}</h1>\n<h2>{message}</h2>\n<h2></h2>\n</body></html>\n"
    )
    return text_response(status, page, "text/html; charset=UTF-8",
                         INVALID_TOKEN if status == 401 else None)


def forbidden(path: str) -> Response:
    return error_page(403, "Forbidden", "Forbidden",
                      f"Your client does not have permission to get URL <code>{html.escape(path)}</code> from this server.")


def unauthorized(path: str) -> Response:
    return error_page(401, "Unauthorized", "Unauthorized",
                      f"Your client does not have permission to the requested URL <code>{html.escape(path)}</code>.")


class CloudRunApp(App):
    """Checks the ID token as Cloud Run does, then echoes the request as the service would."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    def note_leaks(self, request: Request) -> None:
        for name, value in [("path", request.full_path), *request.headers.items()]:
            if self.state.tokens.found_in(value):
                self.state.leaks.append(f"run:{name}")

    async def respond(self, request: Request) -> Response:
        self.note_leaks(request)
        claims: dict[str, Any] | None = None
        response = self.check(request)
        if isinstance(response, dict):
            claims, response = response, self.echo(request, response)
        record(self.state, request, claims is not None, "run")
        return response

    def check(self, request: Request) -> Response | dict[str, Any]:
        """The verified claims, or the refusal Cloud Run would send."""
        host, path = request.host, request.full_path
        if not is_run_host(host):
            return text_response(404, "404 page not found\n")
        header = SERVERLESS_AUTHORIZATION if SERVERLESS_AUTHORIZATION in request.headers else "authorization"
        token = bearer_token(request.headers.get(header))
        if token is None:
            return forbidden(path)
        try:
            claims = self.state.id_tokens.verify(token, self.state.run.audiences_for(host, path))
        except ValueError:
            return unauthorized(path)
        invokers = self.state.run.invokers_for(host)
        caller = claims.get("email") or self.state.id_tokens.email_for(str(claims.get("sub")))
        if invokers is not None and str(caller).lower() not in invokers:
            return forbidden(path)
        return claims

    def echo(self, request: Request, claims: dict[str, Any]) -> Response:
        serverless = SERVERLESS_AUTHORIZATION in request.headers
        return json_response(200, {
            "host": request.host,
            "path": request.full_path,
            "method": request.method,
            "email": claims.get("email"),
            "sub": claims.get("sub"),
            "aud": claims.get("aud"),
            "app_authorization": request.headers.get("authorization") if serverless else None,
        })
