"""Workload identity federation: an OIDC issuer, the pools that trust it, impersonable accounts.

The fake plays both sides. As the workload's identity provider (a Kubernetes projected token,
GitHub Actions, Azure managed identity) it mints RS256 OIDC tokens; as sts.googleapis.com it
checks them against one workload identity pool provider. It also keeps the service accounts a
valid token may impersonate through iamcredentials ``generateAccessToken``, and the workforce
users whose ``external_account_authorized_user`` files STS refreshes.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .credentials import PROJECT_ID, write_json
from .jwt_verify import CLOCK_SKEW, GrantError, parse_rs256
from .storage_model import PROJECT_NUMBER

ISSUER = "https://oidc.example.test"
WORKLOAD_POOL = f"projects/{PROJECT_NUMBER}/locations/global/workloadIdentityPools/fake-pool"
AUDIENCE = f"//iam.googleapis.com/{WORKLOAD_POOL}/providers/fake-oidc"
# A provider's default allowed audience: its resource name as an https URL.
ALLOWED_AUDIENCE = "https:" + AUDIENCE
WORKFORCE_POOL = "locations/global/workforcePools/fake-workforce-pool"
WORKFORCE_AUDIENCE = f"//iam.googleapis.com/{WORKFORCE_POOL}/providers/fake-workforce-provider"
DEFAULT_SUBJECT = "system:serviceaccount:default:demo-app"
URL_SUBJECT = "azure-mi-0f6c1d2e"  # what the metadata server's Azure-style endpoint vouches for
WORKFORCE_SUBJECT = "workforce-user@example.com"  # who a workforce user's refresh speaks for
FEDERATED_SA = f"federated-sa@{PROJECT_ID}.iam.gserviceaccount.com"
IMPERSONATED_SA = f"impersonated-sa@{PROJECT_ID}.iam.gserviceaccount.com"

STS_TOKEN_URL = "https://sts.googleapis.com/v1/token"
STS_OAUTHTOKEN_URL = "https://sts.googleapis.com/v1/oauthtoken"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
SUBJECT_TOKEN_TYPES = (JWT_TOKEN_TYPE, ID_TOKEN_TYPE)


def impersonation_url(email: str) -> str:
    return f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken"


def federated_principal(subject: str) -> str:
    """The IAM principal a workload pool's federated token speaks for (what grants name)."""
    return f"principal://iam.googleapis.com/{WORKLOAD_POOL}/subject/{subject}"


def workforce_principal(subject: str) -> str:
    return f"principal://iam.googleapis.com/{WORKFORCE_POOL}/subject/{subject}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class WorkforceUser:
    client_id: str
    client_secret: str
    refresh_token: str


class Federation:
    """The issuer key, impersonable service accounts and workforce users (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issuer_key: rsa.RSAPrivateKey | None = None  # made on first use: RSA keygen is slow
        self._key_id = secrets.token_hex(8)
        self._targets: set[str] = set()
        self._workforce: dict[str, WorkforceUser] = {}

    # --- the identity provider side ---------------------------------------------------------
    def _key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._issuer_key is None:
                self._issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._issuer_key

    def mint_subject_token(
        self, subject: str, audience: str = ALLOWED_AUDIENCE, *, lifetime: int = 3600,
        now: float | None = None,
    ) -> str:
        """An OIDC token for ``subject`` as the workload's identity provider would issue it."""
        now = time.time() if now is None else now
        header = {"alg": "RS256", "typ": "JWT", "kid": self._key_id}
        claims = {"iss": ISSUER, "sub": subject, "aud": audience, "iat": int(now), "exp": int(now) + lifetime}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"

    # --- the STS side -----------------------------------------------------------------------
    def verify_subject_token(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of a subject token our issuer signed for the pool's provider, else GrantError."""
        now = time.time() if now is None else now
        jwt = parse_rs256(token)
        if jwt.header.get("kid") != self._key_id or jwt.claims.get("iss") != ISSUER:
            raise GrantError("The issuer of the subject token is not trusted by the provider.")
        jwt.check_signature(self._key().public_key())
        claims = jwt.claims
        if claims.get("aud") != ALLOWED_AUDIENCE:
            raise GrantError("The audience in ID Token does not match the expected audience.")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, (int, float)) or exp <= now:
            raise GrantError("ID Token issued at an invalid time or expired.")
        if isinstance(iat, (int, float)) and iat > now + CLOCK_SKEW:
            raise GrantError("ID Token issued at an invalid time or expired.")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise GrantError("The subject token has no subject.")
        return claims

    def workforce_user(self, client_id: str, client_secret: str, refresh_token: str) -> WorkforceUser | None:
        with self._lock:
            found = self._workforce.get(refresh_token)
        if found and found.client_id == client_id and found.client_secret == client_secret:
            return found
        return None

    # --- the IAM side -----------------------------------------------------------------------
    def allow_impersonation(self, email: str) -> None:
        with self._lock:
            self._targets.add(email)

    def can_impersonate(self, email: str) -> bool:
        with self._lock:
            return email in self._targets

    # --- credential files -------------------------------------------------------------------
    def external_account_info(
        self, credential_source: dict[str, Any], *, impersonate: str | None = None,
        quota_project: str | None = None,
    ) -> dict[str, Any]:
        """An ``external_account`` config (what ``gcloud iam workload-identity-pools
        create-cred-config`` writes) for the pool's provider."""
        info: dict[str, Any] = {
            "universe_domain": "googleapis.com",
            "type": "external_account",
            "audience": AUDIENCE,
            "subject_token_type": JWT_TOKEN_TYPE,
            "token_url": STS_TOKEN_URL,
            "credential_source": credential_source,
        }
        if impersonate:
            self.allow_impersonation(impersonate)
            info["service_account_impersonation_url"] = impersonation_url(impersonate)
        if quota_project:
            info["quota_project_id"] = quota_project
        return info

    def write_subject_token_file(
        self, path: Path, subject: str = DEFAULT_SUBJECT, *, token_format: str = "text",
        lifetime: int = 3600,
    ) -> dict[str, Any]:
        """Write an OIDC token file (a Kubernetes projected token, or JSON with ``id_token``);
        returns the ``credential_source`` that reads it."""
        token = self.mint_subject_token(subject, lifetime=lifetime)
        path.parent.mkdir(parents=True, exist_ok=True)
        if token_format == "json":
            path.write_text(json.dumps({"id_token": token}))
            source: dict[str, Any] = {
                "file": str(path), "format": {"type": "json", "subject_token_field_name": "id_token"},
            }
        elif token_format == "text":
            path.write_text(token)
            source = {"file": str(path), "format": {"type": "text"}}
        else:
            raise ValueError(f"token_format must be 'text' or 'json', not {token_format!r}")
        path.chmod(0o600)
        return source

    def write_impersonated_service_account(
        self, path: Path, source_credentials: dict[str, Any], target: str = IMPERSONATED_SA
    ) -> Path:
        """An ``impersonated_service_account`` ADC file (``gcloud auth application-default login
        --impersonate-service-account``)."""
        self.allow_impersonation(target)
        return write_json(Path(path), {
            "type": "impersonated_service_account",
            "service_account_impersonation_url": impersonation_url(target),
            "source_credentials": source_credentials,
            "delegates": [],
        })

    def write_external_account_authorized_user(self, path: Path) -> Path:
        """An ``external_account_authorized_user`` file (``gcloud auth application-default login``
        as a workforce identity federation user)."""
        user = WorkforceUser(
            client_id=f"fake-workforce-client-{secrets.token_hex(4)}",
            client_secret=secrets.token_urlsafe(20),
            refresh_token="fake-workforce-" + secrets.token_urlsafe(32),
        )
        with self._lock:
            self._workforce[user.refresh_token] = user
        return write_json(Path(path), {
            "type": "external_account_authorized_user",
            "audience": WORKFORCE_AUDIENCE,
            "refresh_token": user.refresh_token,
            "token_url": STS_OAUTHTOKEN_URL,
            "token_info_url": "https://sts.googleapis.com/v1/introspect",
            "revoke_url": "https://sts.googleapis.com/v1/revoke",
            "client_id": user.client_id,
            "client_secret": user.client_secret,
            "universe_domain": "googleapis.com",
        })
