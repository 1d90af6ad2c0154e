"""OIDC ID tokens for one audience (Cloud Run, IAP, Cloud Functions), from whatever credentials we hold.

Google signs an ID token only for a service account: a key signs a JWT grant at the token
endpoint, the metadata server mints one for the VM's account, and IAM Credentials'
generateIdToken mints one for an account the caller may impersonate. Anything else (a gcloud
user, a federated identity) fails with one sentence saying to impersonate a service account.

Every object returned has google-auth's shape (``refresh(request)``, ``token``, ``expiry``,
``apply(headers)``) and makes its HTTP calls through the ``request`` it is refreshed with.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from google.auth import (
    compute_engine,
    external_account,
    external_account_authorized_user,
    impersonated_credentials,
)
from google.oauth2 import credentials as user_credentials
from google.oauth2 import gdch_credentials, service_account

from addons.credentials import credential_type, principal
from addons.impersonation import ImpersonatedIdTokenCredentials, parse_chain
from addons.token_cache import TokenError

_CLIENT_ID = re.compile(r"^[0-9]+-[A-Za-z0-9_]+\.apps\.googleusercontent\.com$")
_USE_IMPERSONATION = (
    "use --impersonate-service-account SA so the proxy mints them as that service account"
)


def validate_audience(text: str) -> str:
    """An ID token audience: an http(s) URL with a host, or an OAuth client id (IAP).

    Raises:
        ValueError: one sentence naming the value.
    """
    value = text.strip()
    if _CLIENT_ID.match(value):
        return value
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        host = None
        parts = None
    if (parts is None or parts.scheme not in ("http", "https") or not host or parts.username is not None
            or any(c.isspace() for c in value)):
        raise ValueError(f"The ID token audience {text!r} is neither an http(s) URL with a host nor an "
                         "OAuth client id like 123-abc.apps.googleusercontent.com.")
    return value


def id_token_credentials(base: object | None, audience: str, *, source_token: Callable[[], str] | None = None,
                         chain: Sequence[str] = (), include_email: bool = True) -> Any:
    """Credentials whose ``token`` is an ID token for ``audience``, made from ``base`` (the ADC).

    ``chain`` (with ``source_token``, the ADC's access token): generateIdToken as ``chain[-1]``.
    Without it: a service-account key signs a JWT grant at its token_uri; the metadata server's
    identity endpoint (``format=full``); an impersonated_service_account ADC calls
    generateIdToken with its source credentials. Nothing is fetched here.

    Raises:
        TokenError: reason ``id_token_unsupported`` when ``base`` cannot mint ID tokens.
        ValueError: ``chain`` without ``source_token``, or a bad chain.
    """
    if chain:
        if source_token is None:
            raise ValueError("An impersonation chain needs the source token of the proxy's credentials.")
        return ImpersonatedIdTokenCredentials(source_token, chain, audience, include_email=include_email,
                                              caller=principal(base))
    if isinstance(base, service_account.Credentials):
        return service_account.IDTokenCredentials(
            base.signer, base.service_account_email, base._token_uri,  # no public token_uri accessor
            audience, universe_domain=base.universe_domain)
    if isinstance(base, compute_engine.Credentials):
        # With request=None the constructor fetches nothing (it would look the account's email up).
        return compute_engine.IDTokenCredentials(None, audience, use_metadata_identity_endpoint=True)
    if isinstance(base, impersonated_credentials.Credentials):
        source = base._source_credentials  # google-auth's own IDTokenCredentials opens its own session
        return ImpersonatedIdTokenCredentials.from_source_credentials(
            source, parse_chain([*(base._delegates or []), base._target_principal]), audience,
            include_email=include_email, caller=principal(source))
    raise TokenError(_unsupported(base), "id_token_unsupported")


def _unsupported(base: object | None) -> str:
    """Why ``base`` cannot mint ID tokens, and what to do instead, in one sentence."""
    if base is None:
        return f"No credentials are loaded to mint ID tokens with; {_USE_IMPERSONATION}."
    if isinstance(base, user_credentials.Credentials):
        return f"gcloud user credentials cannot mint ID tokens for an arbitrary audience; {_USE_IMPERSONATION}."
    if isinstance(base, external_account.Credentials | external_account_authorized_user.Credentials):
        return ("Workload or workforce identity federation credentials cannot mint ID tokens for an "
                f"arbitrary audience; {_USE_IMPERSONATION}.")
    if isinstance(base, gdch_credentials.ServiceAccountCredentials):
        return f"GDC service account credentials cannot mint Google ID tokens; {_USE_IMPERSONATION}."
    return f"{credential_type(base)} credentials cannot mint ID tokens for an arbitrary audience; {_USE_IMPERSONATION}."
