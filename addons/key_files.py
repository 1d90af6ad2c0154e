"""Credential files named in the configuration (a route's ``credential = { key_file = "PATH" }``).

Checked when the configuration is read, so a typo fails at start-up with one sentence, and
loaded without network. Messages name the file and what is wrong with it, never its contents:
a key file holds a private key.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import google.auth
from google.auth import credentials as gcredentials
from google.oauth2 import service_account

from addons import redact
from addons.credentials import credential_type, principal
from addons.token_cache import TokenError

# google.auth.load_credentials_from_dict's types (gcloud writes all of them).
KNOWN_TYPES = ("service_account", "authorized_user", "impersonated_service_account", "external_account",
               "external_account_authorized_user", "gdch_service_account")
# Fields whose values must never reach a message, whatever google-auth puts in its own.
_SECRET_FIELDS = ("private_key", "private_key_id", "refresh_token", "client_secret")
MAX_BYTES = 1024 * 1024


class KeyFileError(TokenError, ValueError):
    """A key file that cannot be used: a ValueError at configuration time, a TokenError
    (reason ``key_file_invalid``) when a token is wanted."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "key_file_invalid")


def check_key_file(path: str) -> str:
    """``"TYPE PRINCIPAL"`` (e.g. ``service_account sa@p.iam.gserviceaccount.com``) of a usable file.

    Raises:
        KeyFileError (a ValueError): missing, unreadable, not JSON, not a Google credential file.
    """
    creds = _load(path, request=None)
    who = principal(creds)
    return f"{credential_type(creds)} {who}" if who else credential_type(creds)


def load_key_file(path: str, scopes: Sequence[str], request: object) -> gcredentials.Credentials:
    """The credentials in ``path`` scoped to ``scopes``, not yet refreshed; nothing is fetched.

    Raises:
        KeyFileError: as check_key_file (also a TokenError, so TokenCache shows it as it is).
    """
    return gcredentials.with_scopes_if_required(_load(path, request), scopes)


def read_info(path: str) -> dict[str, Any]:
    """The JSON object in ``path``. Raises KeyFileError saying why it cannot be had."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileError(f"The key file {path} does not exist.") from None
    except PermissionError:
        raise KeyFileError(f"The key file {path} cannot be read: permission denied.") from None
    except IsADirectoryError:
        raise KeyFileError(f"The key file {path} is a directory, not a file.") from None
    except OSError as e:
        raise KeyFileError(f"The key file {path} cannot be read: {e.strerror or type(e).__name__}.") from None
    if len(raw) > MAX_BYTES:
        raise KeyFileError(f"The key file {path} is larger than {MAX_BYTES} bytes, so it is no credential file.")
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(f"The key file {path} is not JSON.") from None
    if not isinstance(info, dict):
        raise KeyFileError(f"The key file {path} is JSON but not a Google credential file (not an object).")
    return info


def _load(path: str, request: object) -> gcredentials.Credentials:
    info = read_info(path)
    kind = info.get("type")
    if kind not in KNOWN_TYPES:
        shown = f"type {kind!r}" if isinstance(kind, str) and kind.isidentifier() else "no known type"
        raise KeyFileError(f"The key file {path} is not a Google credential file ({shown}; expected one of "
                           f"{', '.join(KNOWN_TYPES)}).")
    try:
        if kind == "service_account":
            missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
            if missing:
                raise KeyFileError(f"The service account key file {path} lacks {', '.join(missing)}.")
            return service_account.Credentials.from_service_account_info(info)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # load_credentials_from_dict's notice
            # Unscoped, so an external account's project lookup (a network call) is skipped.
            creds, _project = google.auth.load_credentials_from_dict(info, request=request)
        return creds
    except KeyFileError:
        raise
    except Exception as e:  # noqa: BLE001 - google-auth and cryptography raise many types
        raise KeyFileError(f"The key file {path} is a {kind} file google-auth cannot use: "
                           f"{_safe_detail(e, info)}") from None


def _safe_detail(error: BaseException, info: dict[str, Any]) -> str:
    """google-auth's words about the file, minus any secret value from it."""
    secrets = [str(info[k]) for k in _SECRET_FIELDS if info.get(k)]
    detail = redact.redact_text(str(error), secrets)
    if "PRIVATE KEY" in detail or not detail.strip():
        return f"{type(error).__name__} (details withheld)."
    detail = " ".join(detail.split())[:200]
    return detail if detail.endswith(".") else detail + "."
