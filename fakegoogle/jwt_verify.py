"""RS256 JWT checks (pure functions): oauth2 JWT-bearer assertions, and the parsing STS uses."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .credentials import ServiceAccountKey

CLOCK_SKEW = 300
MAX_LIFETIME = 3600 + CLOCK_SKEW


class GrantError(Exception):
    """The assertion is unacceptable; ``str(err)`` becomes ``error_description``."""


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass(frozen=True)
class SignedJwt:
    """A compact RS256 JWT split into its parts; nothing about it is trusted yet."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    def check_signature(self, public_key: rsa.RSAPublicKey) -> None:
        try:
            public_key.verify(self.signature, self.signing_input, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature as exc:
            raise GrantError("Invalid JWT Signature.") from exc


def parse_rs256(token: str) -> SignedJwt:
    """Split and decode a compact RS256 JWT; raises GrantError when it is malformed."""
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = json.loads(_b64decode(header_b64))
        claims = json.loads(_b64decode(payload_b64))
        signature = _b64decode(signature_b64)
    except (ValueError, TypeError) as exc:
        raise GrantError("Invalid JWT: malformed token.") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
        raise GrantError("Invalid JWT: unsupported algorithm.")
    return SignedJwt(header, claims, f"{header_b64}.{payload_b64}".encode(), signature)


def verify_assertion(
    assertion: str,
    find_key: Callable[[str | None, str | None], ServiceAccountKey | None],
    now: float | None = None,
) -> dict[str, Any]:
    """Return the claims of a valid assertion signed by a known key, else raise GrantError."""
    now = time.time() if now is None else now
    jwt = parse_rs256(assertion)
    claims = jwt.claims
    key = find_key(jwt.header.get("kid"), claims.get("iss"))
    if key is None:
        raise GrantError("Invalid grant: account not found")
    jwt.check_signature(key.public_key)
    if claims.get("aud") != key.token_uri:
        raise GrantError(f"Invalid JWT: audience must be {key.token_uri}.")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, (int, float)) or exp <= now:
        raise GrantError(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
        )
    if isinstance(iat, (int, float)) and (iat > now + CLOCK_SKEW or exp - iat > MAX_LIFETIME):
        raise GrantError(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim."
        )
    return claims
