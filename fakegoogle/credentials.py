"""Credential files the fake writes, and the registry used to check grants.

Service-account keys are real RSA keys so google-auth signs genuine RS256
JWTs; the fake keeps only the public half to verify them.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PROJECT_ID = "fake-project"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"


@dataclass(frozen=True)
class ServiceAccountKey:
    email: str
    key_id: str
    public_key: rsa.RSAPublicKey
    token_uri: str


@dataclass(frozen=True)
class AuthorizedUser:
    client_id: str
    client_secret: str
    refresh_token: str
    account: str


def service_account_json(
    email: str, key_id: str, private_pem: str, token_uri: str, quota_project: str | None
) -> dict[str, Any]:
    """The JSON layout of a key downloaded from the Cloud console."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": key_id,
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(100000000000000000000 + secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        + email.replace("@", "%40"),
        "universe_domain": "googleapis.com",
    }
    if quota_project:
        info["quota_project_id"] = quota_project
    return info


class CredentialRegistry:
    """Remembers every credential this fake handed out (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, ServiceAccountKey] = {}
        self._users: dict[str, AuthorizedUser] = {}

    def write_service_account_key(
        self, path: Path, *, quota_project: str | None = None, token_uri: str = DEFAULT_TOKEN_URI
    ) -> Path:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        key_id = secrets.token_hex(20)
        email = f"demo-sa@{PROJECT_ID}.iam.gserviceaccount.com"
        with self._lock:
            self._keys[key_id] = ServiceAccountKey(
                email, key_id, private_key.public_key(), token_uri
            )
        info = service_account_json(email, key_id, private_pem, token_uri, quota_project)
        return write_json(Path(path), info)

    def write_authorized_user(self, path: Path, *, quota_project: str | None = None) -> Path:
        return write_json(Path(path), self.authorized_user_info(quota_project=quota_project))

    def authorized_user_info(self, *, quota_project: str | None = None) -> dict[str, Any]:
        """A new gcloud user credential (registered here), as the ADC file's JSON."""
        user = AuthorizedUser(
            client_id=f"{secrets.randbelow(10**12):012d}-fake.apps.googleusercontent.com",
            client_secret="GOCSPX-" + secrets.token_urlsafe(20),
            refresh_token="1//fake-" + secrets.token_urlsafe(40),
            account="user@example.com",
        )
        with self._lock:
            self._users[user.refresh_token] = user
        info: dict[str, Any] = {
            "type": "authorized_user",
            "client_id": user.client_id,
            "client_secret": user.client_secret,
            "refresh_token": user.refresh_token,
            "account": user.account,
            "universe_domain": "googleapis.com",
        }
        if quota_project:
            info["quota_project_id"] = quota_project
        return info

    def key(self, key_id: str | None, email: str | None) -> ServiceAccountKey | None:
        """Find a key by ``kid``, falling back to the issuer when no kid is sent."""
        with self._lock:
            if key_id:
                found = self._keys.get(key_id)
                return found if found and (email is None or found.email == email) else None
            return next((k for k in self._keys.values() if k.email == email), None)

    def has_service_account(self, email: str) -> bool:
        """Whether a key this fake wrote belongs to ``email`` (so the account exists)."""
        with self._lock:
            return any(k.email.lower() == email.lower() for k in self._keys.values())

    def user(self, client_id: str, client_secret: str, refresh_token: str) -> AuthorizedUser | None:
        with self._lock:
            found = self._users.get(refresh_token)
        if found and found.client_id == client_id and found.client_secret == client_secret:
            return found
        return None


def write_json(path: Path, info: dict[str, Any]) -> Path:
    """Write a credential file as gcloud does: owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2) + "\n")
    path.chmod(0o600)
    return path
