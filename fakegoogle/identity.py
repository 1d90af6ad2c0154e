"""Google's OpenID Connect ID tokens: the fake's signing key, the tokens it signs, their checks.

Real Google signs every ID token (``iss`` https://accounts.google.com) with keys it publishes at
www.googleapis.com/oauth2/v3/certs (JWKS) and /oauth2/v1/certs (``kid`` -> x509 PEM); receivers
such as Cloud Run and IAP check signature, audience and expiry. One key per fake is enough: the
issuer is shared by the token endpoint, iamcredentials ``generateIdToken``, the metadata
server's identity endpoint and the Cloud Run origin that verifies what they minted.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .jwt_verify import GrantError, parse_rs256

GOOGLE_ISSUER = "https://accounts.google.com"
# google-auth's verify_oauth2_token also accepts the scheme-less issuer, as Google documents.
ACCEPTED_ISSUERS = (GOOGLE_ISSUER, "accounts.google.com")
CERTS_V1_PATH = "/oauth2/v1/certs"
CERTS_V3_PATH = "/oauth2/v3/certs"
MAX_LIFETIME = 3600  # Google's ID tokens live one hour


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unique_id(email: str) -> str:
    """A service account's stable 21-digit unique id (``sub``/``azp`` of its ID tokens).

    Derived from the email so every fake (and every process) agrees without a registry.
    """
    digest = int.from_bytes(hashlib.sha256(email.lower().encode()).digest()[:16], "big")
    return "1" + f"{digest % 10**20:020d}"


class IdTokenIssuer:
    """Signs and verifies ID tokens with one RSA key (made on first use: keygen is slow)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: rsa.RSAPrivateKey | None = None
        self._cert_pem: str | None = None
        self.key_id = secrets.token_hex(20)
        self._emails: dict[str, str] = {}  # sub -> email, so a token without email still names its caller
        self._issued: list[str] = []

    def _private_key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    # --- minting ----------------------------------------------------------------------------
    def mint(
        self, audience: str, email: str, *, include_email: bool = True, lifetime: int = MAX_LIFETIME,
        now: float | None = None, extra: dict[str, Any] | None = None,
    ) -> str:
        """An ID token for service account ``email`` with ``aud`` = ``audience``.

        ``lifetime`` is capped at an hour (Google's); ``include_email`` adds ``email`` and
        ``email_verified`` (generateIdToken's ``includeEmail``); ``extra`` adds claims such as
        the metadata server's ``google``.
        """
        issued_at = int(time.time() if now is None else now)
        sub = unique_id(email)
        claims: dict[str, Any] = {"aud": audience, "azp": sub}
        if include_email:
            claims |= {"email": email, "email_verified": True}
        claims |= {
            "exp": issued_at + min(max(int(lifetime), 0), MAX_LIFETIME),
            "iat": issued_at,
            "iss": GOOGLE_ISSUER,
            "sub": sub,
        }
        claims |= extra or {}
        header = {"alg": "RS256", "kid": self.key_id, "typ": "JWT"}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self._private_key().sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = f"{signing_input}.{b64url(signature)}"
        with self._lock:
            self._emails[sub] = email
            self._issued.append(token)
        return token

    @property
    def issued(self) -> list[str]:
        """Every ID token minted so far (for leak checks: they must not reach other origins)."""
        with self._lock:
            return list(self._issued)

    def found_in(self, text: str) -> bool:
        with self._lock:
            return any(token in text for token in self._issued)

    def email_for(self, sub: str) -> str | None:
        """The service account a ``sub`` belongs to (the IAM check needs no ``email`` claim)."""
        with self._lock:
            return self._emails.get(sub)

    # --- checking ---------------------------------------------------------------------------
    def verify(
        self, token: str, audience: str | Iterable[str] | None, now: float | None = None
    ) -> dict[str, Any]:
        """The claims of ``token`` if this issuer signed it for ``audience`` (any of several, or
        None for any) and it has not expired; else ValueError saying why."""
        now = time.time() if now is None else now
        try:
            jwt = parse_rs256(token)
            if jwt.header.get("kid") != self.key_id:
                raise GrantError("Token signed by an unknown key.")
            jwt.check_signature(self._private_key().public_key())
        except GrantError as exc:
            raise ValueError(str(exc)) from exc
        claims = jwt.claims
        if claims.get("iss") not in ACCEPTED_ISSUERS:
            raise ValueError(f"Wrong issuer: {claims.get('iss')!r}.")
        wanted = {audience} if isinstance(audience, str) else None if audience is None else set(audience)
        if wanted is not None and claims.get("aud") not in wanted:
            raise ValueError(f"Wrong audience: {claims.get('aud')!r}.")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp <= now:
            raise ValueError("Token expired.")
        return claims

    # --- publishing -------------------------------------------------------------------------
    def jwks(self) -> dict[str, Any]:
        """What https://www.googleapis.com/oauth2/v3/certs serves."""
        numbers = self._private_key().public_key().public_numbers()
        return {"keys": [{
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.key_id,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        }]}

    def x509_certs(self) -> dict[str, str]:
        """What https://www.googleapis.com/oauth2/v1/certs serves: ``kid`` -> PEM certificate."""
        key = self._private_key()
        with self._lock:
            if self._cert_pem is None:
                name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "securetoken.system.gserviceaccount.com")])
                start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
                cert = (
                    x509.CertificateBuilder().subject_name(name).issuer_name(name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
                    .sign(key, hashes.SHA256())
                )
                self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
            return {self.key_id: self._cert_pem}
