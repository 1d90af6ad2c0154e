"""Plain-HTTP fake GCE metadata server, plus the /_fake/ admin endpoints.

``instance/service-accounts/default/identity?audience=AUD[&format=full][&licenses=TRUE]`` mints
a Google-signed ID token for the default service account (text/plain, as GCE answers);
``format=full`` adds the ``google.compute_engine`` claim describing this fake instance.

Also GET /metadata/identity/oauth2/token?resource=AUD (header ``Metadata: true``), Azure's
managed identity endpoint, which mints an OIDC subject token for URL-sourced federation.

Admin (no Metadata-Flavor needed), for out-of-process control of a running fake:
  POST /_fake/revoke_all
  POST /_fake/token_failure?mode=500|invalid_grant|429|hang|none
  POST /_fake/token_lifetime?seconds=N
  GET  /_fake/stats  -> {"token_fetches", "token_requests", "requests",
                         "requests_without_valid_token"}
"""

from __future__ import annotations

import time

from .credentials import PROJECT_ID
from .federation import URL_SUBJECT
from .http import (
    App,
    Request,
    Response,
    json_response,
    text_response,
)
from .state import SharedState
from .storage_model import PROJECT_NUMBER
from .token_failures import failure_response

SA_EMAIL = f"metadata-sa@{PROJECT_ID}.iam.gserviceaccount.com"
DEFAULT_SCOPES = [
    "https://www.googleapis.com/auth/cloud-platform",
    "https://www.googleapis.com/auth/userinfo.email",
]
FLAVOR = [("metadata-flavor", "Google")]
ROOT = "/computeMetadata/v1/"
AZURE_TOKEN_PATH = "/metadata/identity/oauth2/token"
SA_PREFIX = "instance/service-accounts/"

INSTANCE_ID = "4000000000000000000"
INSTANCE_NAME = "demo-vm-1"
ZONE = "us-central1-a"
INSTANCE_CREATED = int(time.time())  # instance_creation_timestamp in full-format identity tokens

STATIC: dict[str, str] = {
    "project/project-id": PROJECT_ID,
    "project/numeric-project-id": PROJECT_NUMBER,
    "instance/id": INSTANCE_ID,
    "instance/name": INSTANCE_NAME,
    "instance/hostname": f"{INSTANCE_NAME}.{ZONE}.c.{PROJECT_ID}.internal",
    "instance/zone": f"projects/{PROJECT_NUMBER}/zones/{ZONE}",
    "universe/universe-domain": "googleapis.com",
    SA_PREFIX: f"default/\n{SA_EMAIL}/\n",
}


def metadata_text(text: str, status: int = 200) -> Response:
    return text_response(status, text, "application/text", FLAVOR)


def compute_engine_claim(licenses: bool) -> dict[str, object]:
    """The ``google`` claim of a ``format=full`` identity token, describing this instance."""
    details: dict[str, object] = {
        "instance_creation_timestamp": INSTANCE_CREATED,
        "instance_id": INSTANCE_ID,
        "instance_name": INSTANCE_NAME,
        "project_id": PROJECT_ID,
        "project_number": int(PROJECT_NUMBER),
        "zone": ZONE,
    }
    if licenses:
        details["license_id"] = []
    return {"compute_engine": details}


def stats(state: SharedState) -> dict[str, int]:
    return {
        "token_fetches": state.tokens.fetches,
        "token_requests": state.tokens.requests,
        "requests": state.log.total,
        "requests_without_valid_token": state.log.without_valid_token,
    }


class MetadataApp(App):
    """Answers like metadata.google.internal for google-auth's compute_engine credentials."""

    def __init__(self, state: SharedState) -> None:
        self.state = state

    async def respond(self, request: Request) -> Response:
        path = request.raw_path
        if path.startswith("/_fake/"):
            return self.admin(request, path[len("/_fake/") :])
        self.state.metadata_requests.append(f"{request.method} {path}")
        if path == AZURE_TOKEN_PATH:
            return self.azure_identity_token(request)
        if path == "/":
            return metadata_text("computeMetadata/\n")
        if not path.startswith(ROOT):
            return metadata_text("Not Found\n", 404)
        if request.headers.get("metadata-flavor", "").lower() != "google":
            return text_response(403, "Missing required header: Metadata-Flavor\n")
        return await self.metadata(request, path[len(ROOT) :])

    async def metadata(self, request: Request, key: str) -> Response:
        if key in STATIC:
            return metadata_text(STATIC[key])
        if not key.startswith(SA_PREFIX):
            return metadata_text("Not Found\n", 404)
        account, _, leaf = key[len(SA_PREFIX) :].partition("/")
        if account not in ("default", SA_EMAIL):
            return metadata_text("Not Found\n", 404)
        if leaf == "":
            if request.query.get("recursive", "").lower() == "true":
                return json_response(
                    200,
                    {"aliases": ["default"], "email": SA_EMAIL, "scopes": DEFAULT_SCOPES},
                    FLAVOR,
                )
            return metadata_text("aliases\nemail\nidentity\nscopes\ntoken\n")
        if leaf == "email":
            return metadata_text(SA_EMAIL)
        if leaf == "aliases":
            return metadata_text("default\n")
        if leaf == "scopes":
            return metadata_text("\n".join(DEFAULT_SCOPES) + "\n")
        if leaf == "token":
            return await self.token(request.query.get("scopes"))
        if leaf == "identity":
            return await self.identity(request.query)
        return metadata_text("Not Found\n", 404)

    async def token(self, scopes: str | None) -> Response:
        """Issue a token; ``?scopes=a,b`` is echoed back as ``scope`` (the real server scopes the token)."""
        self.state.tokens.count_request("metadata")
        failure = await failure_response(self.state.tokens, self.state.stopping)
        if failure is not None:
            failure.headers.extend(FLAVOR)
            return failure
        token, expires_in = self.state.tokens.issue("metadata", principal=SA_EMAIL)
        payload: dict[str, object] = {
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
        }
        if scopes:
            payload["scope"] = " ".join(s for s in scopes.split(",") if s)
        return json_response(200, payload, FLAVOR)

    async def identity(self, query: dict[str, str]) -> Response:
        """An ID token for the default service account, ``aud`` = ``?audience=`` (required)."""
        self.state.tokens.count_request("metadata_identity")
        failure = await failure_response(self.state.tokens, self.state.stopping)
        if failure is not None:
            failure.headers.extend(FLAVOR)
            return failure
        audience = query.get("audience", "")
        if not audience:
            return metadata_text("non-empty audience parameter required\n", 400)
        form = query.get("format", "standard")
        if form not in ("standard", "full"):
            return metadata_text("invalid format parameter\n", 400)
        extra = None
        if form == "full":
            extra = {"google": compute_engine_claim(query.get("licenses", "").upper() == "TRUE")}
        token = self.state.id_tokens.mint(audience, SA_EMAIL, lifetime=self.state.tokens.lifetime, extra=extra)
        return text_response(200, token, "text/plain; charset=utf-8", FLAVOR)

    def azure_identity_token(self, request: Request) -> Response:
        """Azure IMDS-style managed identity token: the URL-sourced subject token for
        workload identity federation (``credential_source.url``)."""
        if request.headers.get("metadata", "").lower() != "true":
            return json_response(400, {"error": "invalid_request", "error_description": "Required metadata header not specified"})
        resource = request.query.get("resource", "")
        if not resource:
            return json_response(400, {"error": "invalid_resource", "error_description": "resource is required"})
        token = self.state.federation.mint_subject_token(URL_SUBJECT, resource)
        return json_response(200, {"access_token": token, "token_type": "Bearer", "resource": resource})

    def admin(self, request: Request, action: str) -> Response:
        tokens = self.state.tokens
        if action == "stats" and request.method == "GET":
            return json_response(200, stats(self.state))
        if request.method != "POST":
            return json_response(405, {"error": "use POST"})
        if action == "revoke_all":
            tokens.revoke_all()
        elif action == "token_failure":
            mode = request.query.get("mode") or None
            try:
                tokens.set_failure(None if mode in (None, "none") else mode)
            except ValueError as exc:
                return json_response(400, {"error": str(exc)})
        elif action == "token_lifetime":
            try:
                tokens.lifetime = int(request.query["seconds"])
            except (KeyError, ValueError):
                return json_response(400, {"error": "seconds=N required"})
        else:
            return json_response(404, {"error": f"unknown admin action {action}"})
        return json_response(200, {"ok": True})
