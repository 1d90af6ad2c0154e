"""Pure redaction of secrets in URLs and headers, for logs and the audit log."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, unquote

MARKER = "REDACTED"

# Query parameters that grant access by themselves (compared case-insensitively).
# upload_id: a resumable-upload session URI accepts data without further auth.
SECRET_PARAMS = frozenset(
    {
        "access_token",
        "key",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "upload_id",
        "token",
        "id_token",
        "refresh_token",
        "client_secret",
        "assertion",
        "code",
        "x-amz-signature",
        "x-amz-credential",
        "googleaccessid",
        "sig",
    }
)

SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-goog-iam-authorization-token"}
)

# Anything that looks like a Google OAuth access token or a JWT, wherever it appears.
_TOKEN_LIKE = re.compile(r"ya29\.[A-Za-z0-9_\-.]+|eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[^\s,;\"']+")


def fingerprint(token: str) -> str:
    """A short, non-reversible id for a token: enough to tell tokens apart in a log."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def redact_query(query: str) -> str:
    """Replace values of secret parameters in a raw query string, keeping order and the rest as-is."""
    if not query:
        return query
    parts = []
    for part in query.split("&"):
        name, _, _value = part.partition("=")
        if unquote(name).strip().lower() in SECRET_PARAMS:
            part = f"{name}={MARKER}"
        parts.append(part)
    return "&".join(parts)


def redact_url(url: str) -> str:
    """Redact secret query parameters (and any userinfo) of a URL or an origin-form path."""
    url, hash_sep, fragment = url.partition("#")
    base, qsep, query = url.partition("?")
    if "://" in base:
        scheme, _, rest = base.partition("://")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = f"{MARKER}@" + authority.rpartition("@")[2]
        base = f"{scheme}://{authority}{slash}{path}"
    out = base + (qsep + redact_query(query) if qsep else "")
    if hash_sep:
        out += "#" + redact_query(fragment)
    return redact_text(out)


def redact_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str]) -> dict[str, str]:
    """A copy of headers with secret values replaced; names lower-cased."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in items:
        lname = name.lower()
        out[lname] = MARKER if lname in SECRET_HEADERS else redact_text(value)
    return out


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove token-like strings, bearer credentials and the given secrets from free text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MARKER)
            text = text.replace(quote(secret, safe=""), MARKER)
    text = _BEARER.sub(lambda m: m.group(1) + MARKER, text)
    return _TOKEN_LIKE.sub(MARKER, text)
