"""Application Default Credentials found as ``google.auth.default()`` finds them, without its side trips."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import google.auth
from google.auth import (
    _cloud_sdk,  # private: where gcloud keeps its ADC file, as default() looks for it
    compute_engine,
    environment_vars,
    external_account,
    external_account_authorized_user,
    impersonated_credentials,
)
from google.auth import credentials as gcredentials
from google.auth import exceptions as gexc
from google.auth.compute_engine import _metadata  # private: default()'s own GCE probe
from google.oauth2 import credentials as user_credentials
from google.oauth2 import gdch_credentials, service_account

# google.auth.default()'s own words when nothing is found (token_cache.describe_error keys on "not found").
CREDENTIALS_NOT_FOUND = (
    "Your default credentials were not found. To set up Application Default Credentials, see "
    "https://cloud.google.com/docs/authentication/external/set-up-adc for more information."
)
# A subject token file bigger than this is not read for its subject (a JWT is a few KiB).
SUBJECT_TOKEN_MAX_BYTES = 64 * 1024
# IAM's limit on google.subject.
SUBJECT_MAX_BYTES = 127
_POOL_AUDIENCE = re.compile(
    r"^//(?P<host>iam\.[a-z0-9.-]+)/(?P<pool>(?:projects/[^/]+/)?locations/[^/]+/"
    r"(?:workloadIdentityPools|workforcePools)/[^/]+)/providers/[^/]+$"
)
_JWT_TOKEN_TYPES = ("urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token")


def load_credentials(scopes: Sequence[str], request: Any) -> gcredentials.Credentials:
    """The environment's Application Default Credentials, scoped to ``scopes``, not yet refreshed.

    Searches where ``google.auth.default()`` does, in its order: the file named by
    ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's ADC file, the GCE metadata server (App Engine's
    first-generation python27 runtime, also on its list, cannot run this code). Every ADC file
    type google-auth loads is accepted: service_account, authorized_user,
    impersonated_service_account, external_account (identity pool with a file, URL or executable
    subject token, AWS; with or without service-account impersonation),
    external_account_authorized_user, gdch_service_account.

    Unlike ``default()``, it never looks the project up, which the proxy has no use for:
    ``default(scopes=..., request=...)`` refreshes an external account (an STS exchange, plus
    generateAccessToken when it impersonates) only to ask cloudresourcemanager for the project,
    and the token cache then refreshes it again; for gcloud's file it runs ``gcloud config``;
    on GCE it asks the metadata server. Here a file is loaded unscoped (an unscoped external
    account skips the lookup), then scoped, and nothing is fetched. The one request ever made
    is the metadata-server probe when no file is found, as ``default()`` makes it, through
    ``request``: our resolve rules, and no ``HTTPS_PROXY`` loop back into ourselves.

    Raises:
        google.auth.exceptions.DefaultCredentialsError: no credentials, a named file missing,
            not JSON, or not a credential google-auth knows (the messages ``default()`` gives).
        OSError: a credentials file that exists but cannot be read.
    """
    path = os.environ.get(environment_vars.CREDENTIALS, "")
    if not path:
        gcloud_file = _cloud_sdk.get_application_default_credentials_path()
        path = gcloud_file if os.path.isfile(gcloud_file) else ""
    creds: gcredentials.Credentials
    if path:
        with warnings.catch_warnings():
            # "load_credentials_from_file is deprecated": default() silences it the same way;
            # the file is the operator's own ADC, not a configuration from a stranger.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Unscoped, so an external account's project lookup is skipped; ``request`` only
            # makes sure that if a google-auth version looked anyway, it would go where ours go.
            creds, _project = google.auth.load_credentials_from_file(path, request=request)
    elif _metadata.is_on_gce(request):
        creds = compute_engine.Credentials().with_quota_project_from_environment()
    else:
        raise gexc.DefaultCredentialsError(CREDENTIALS_NOT_FOUND)
    return gcredentials.with_scopes_if_required(creds, scopes)


# google-auth's class for each ADC ``type`` (external_account has three: identity pool, AWS, executable).
_TYPES: tuple[tuple[type, str], ...] = (
    (service_account.Credentials, "service_account"),
    (user_credentials.Credentials, "authorized_user"),
    (impersonated_credentials.Credentials, "impersonated_service_account"),
    (external_account_authorized_user.Credentials, "external_account_authorized_user"),
    (external_account.Credentials, "external_account"),
    (gdch_credentials.ServiceAccountCredentials, "gdch_service_account"),
    (compute_engine.Credentials, "gce_metadata"),
)


def credential_type(creds: object) -> str:
    """The ADC file ``type`` of ``creds`` (``gce_metadata`` for the metadata server), else the
    class name."""
    for cls, name in _TYPES:
        if isinstance(creds, cls):
            return name
    return type(creds).__name__


def principal(creds: object | None) -> str | None:
    """The identity ``creds`` act as, for the log and the audit record. Never a secret.

    * service_account: the key's ``client_email``.
    * authorized_user: the ``account`` in the file, else ``client:CLIENT_ID`` (the OAuth client;
      the user's email is only known to Google).
    * impersonated_service_account, and external_account with
      ``service_account_impersonation_url``: the impersonated service account's email.
    * external_account without impersonation: the federated identity in IAM's syntax.
      ``principal://iam.googleapis.com/POOL/subject/SUB`` when SUB is readable offline: the
      ``sub`` claim of a file-sourced JWT subject token (read once, never verified, never
      logged), which is ``google.subject`` under a provider's default OIDC attribute mapping
      (a provider that maps ``google.subject`` from another claim names the workload by that
      instead). Otherwise ``principalSet://iam.googleapis.com/POOL/*``, some identity in the
      pool: URL-, executable- and AWS-sourced tokens are not fetched to find out. POOL is
      ``projects/N/locations/global/workloadIdentityPools/P`` (or a workforce pool); an audience
      naming no pool is returned as it is.
    * external_account_authorized_user: ``principalSet://iam.googleapis.com/locations/global/
      workforcePools/P/*``: the workforce user's name is not in the file.
    * gce_metadata: the VM's service-account email once the first token fetch has looked it up;
      ``metadata:default`` before that.
    * gdch_service_account: ``system:serviceaccount:PROJECT:NAME``.

    None for None, or for an object that is none of these and names no account.
    """
    if creds is None:
        return None
    if isinstance(creds, external_account.Credentials):
        return creds.service_account_email or _federated_principal(creds)
    if isinstance(creds, external_account_authorized_user.Credentials):
        return _pool_principal(creds.audience or "", None)
    if isinstance(creds, compute_engine.Credentials):
        email = creds.service_account_email
        return email if email and email != "default" else "metadata:default"
    if isinstance(creds, gdch_credentials.ServiceAccountCredentials):
        project = getattr(creds, "_project", None)
        name = getattr(creds, "_service_identity_name", None)
        return f"system:serviceaccount:{project}:{name}"
    for attr in ("service_account_email", "signer_email", "account"):
        value = getattr(creds, attr, None)
        if isinstance(value, str) and value and value != "default":
            return value
    client_id = getattr(creds, "client_id", None)
    if isinstance(client_id, str) and client_id:
        return f"client:{client_id}"
    return None


# principal() runs for every injected request: a subject read from a file is remembered per
# credentials object (the cache keeps one), so the file is read once, off the event loop (the
# first call is the "token available" log line, made on the refreshing worker thread).
_federated: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()
_federated_lock = threading.Lock()


def _federated_principal(creds: external_account.Credentials) -> str:
    with _federated_lock:
        known = _federated.get(creds)
    if known is not None:
        return known
    info = creds.info
    audience = str(info.get("audience") or "")
    source = info.get("credential_source")
    subject = None
    if info.get("subject_token_type") in _JWT_TOKEN_TYPES and isinstance(source, Mapping):
        try:
            subject = _subject_from_file(source)
        except OSError:
            return _pool_principal(audience, None)  # the file is not there yet: look again next time
    found = _pool_principal(audience, subject)
    with _federated_lock:
        _federated[creds] = found
    return found


def _pool_principal(audience: str, subject: str | None) -> str:
    match = _POOL_AUDIENCE.match(audience)
    if match is None:
        return audience
    host, pool = match.group("host"), match.group("pool")
    if subject is None:
        return f"principalSet://{host}/{pool}/*"
    return f"principal://{host}/{pool}/subject/{subject}"


def _subject_from_file(source: Mapping[str, Any]) -> str | None:
    """The ``sub`` claim of the JWT in a file-sourced ``credential_source``, or None.

    Raises OSError when the file cannot be read.
    """
    path = source.get("file")
    if not isinstance(path, str) or not path:
        return None
    with open(path, "rb") as f:
        raw = f.read(SUBJECT_TOKEN_MAX_BYTES + 1)
    if len(raw) > SUBJECT_TOKEN_MAX_BYTES:
        return None
    text = raw.decode("utf-8", "replace").strip()
    form = source.get("format")
    if isinstance(form, Mapping) and form.get("type") == "json":
        try:
            document = json.loads(text)
        except ValueError:
            return None
        field = form.get("subject_token_field_name")
        value = document.get(field) if isinstance(document, dict) and isinstance(field, str) else None
        if not isinstance(value, str):
            return None
        text = value.strip()
    return _jwt_subject(text)


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The claims of a compact JWS, unverified (whoever receives the token verifies it); None when
    it is not one (opaque, or an encrypted JWT of five parts)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _jwt_subject(token: str) -> str | None:
    """The ``sub`` claim of a compact JWS, unverified; None unless it is a plausible subject."""
    claims = jwt_claims(token)
    subject = claims.get("sub") if claims is not None else None
    if not isinstance(subject, str) or not subject or len(subject.encode()) > SUBJECT_MAX_BYTES:
        return None
    if not subject.isprintable() or any(c.isspace() for c in subject):
        return None  # it goes into log lines and audit records verbatim
    return subject
