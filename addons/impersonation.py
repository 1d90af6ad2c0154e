"""Service-account impersonation through IAM Credentials, as gcloud's --impersonate-service-account.

The proxy's own (ADC) token asks iamcredentials.googleapis.com for an access token or an ID
token of another service account, optionally through a delegation chain. Every IAM refusal
becomes one sentence saying who needs which role on which account: that sentence reaches HTTP
clients, so it never holds a token (the source token is also scrubbed from Google's own words).

No mitmproxy import: TokenCache calls ``refresh(request)`` on a worker thread, and every HTTP
call goes through that ``request`` (our --resolve rules, CAs and upstream proxy).
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from addons import redact
from addons.credentials import jwt_claims
from addons.token_cache import TokenError

IAM_URL = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{}:{}"
DELEGATE_PREFIX = "projects/-/serviceAccounts/"
TOKEN_CREATOR = "roles/iam.serviceAccountTokenCreator"
ACCESS_PERMISSION = "iam.serviceAccounts.getAccessToken"
ID_PERMISSION = "iam.serviceAccounts.getOpenIdToken"
# TimedRequest lowers this to its own ceiling; a bare google-auth Request would wait 120 s.
TIMEOUT = 30.0
# Stop calling a token valid this long before IAM's stated expiry (as google-auth does).
EXPIRY_SKEW = datetime.timedelta(seconds=10)
MAX_LIFETIME = 43200  # IAM's ceiling (12 h, with the org policy constraint lifted)
GOOGLE_MESSAGE_MAX = 200

_MENTIONED_EMAIL = re.compile(r"[^\s'\"/:,;()<>]+@[^\s'\"/:,;()<>]+")
_EMAIL = re.compile(r"^[^@\s/:?#,\"'<>]+@[^@\s/:?#,\"'<>]+$")

SourceToken = Callable[[], str]


# -- the chain ---------------------------------------------------------------------------------


def parse_chain(value: str | Sequence[str]) -> tuple[str, ...]:
    """gcloud's ``--impersonate-service-account A,B,C``: delegates A, B, then the target C.

    A list is taken item by item (each item may itself be comma separated). Entries may carry
    IAM's ``projects/-/serviceAccounts/`` prefix (as ADC files' ``delegates`` sometimes do).

    Raises:
        ValueError: one sentence naming the bad part.
    """
    parts = value.split(",") if isinstance(value, str) else [p for item in value for p in item.split(",")]
    shown = ",".join(p.strip() for p in parts)
    if not shown.strip(", "):
        raise ValueError("The impersonation chain is empty: name at least one service account email.")
    chain: list[str] = []
    seen: set[str] = set()
    for part in parts:
        email = part.strip().removeprefix(DELEGATE_PREFIX)
        if not email:
            raise ValueError(f"The impersonation chain {shown!r} has an empty entry (a stray comma?).")
        if not _EMAIL.match(email):
            raise ValueError(f"The impersonation chain {shown!r} names {email!r}, which is not a "
                             "service account email.")
        if email.lower() in seen:
            raise ValueError(f"The impersonation chain {shown!r} loops: {email} appears twice.")
        seen.add(email.lower())
        chain.append(email)
    return tuple(chain)


def describe_chain(chain: Sequence[str]) -> str:
    """``C`` or ``C (via A, B)``: the target, and the delegates the request goes through."""
    target, delegates = chain[-1], chain[:-1]
    return f"{target} (via {', '.join(delegates)})" if delegates else target


# -- IAM's answers as one sentence ---------------------------------------------------------------


def google_error(data: bytes | str) -> tuple[str | None, str | None, tuple[str, ...], Mapping[str, Any]]:
    """(message, status, reasons, ErrorInfo metadata) of a Google JSON error body; Nones if not one.

    Takes ``{"error": {"message", "status", "details": [ErrorInfo], "errors": [...]}}`` and the
    OAuth shape ``{"error": "...", "error_description": "..."}``.
    """
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None, None, (), {}
    if not isinstance(body, dict):
        return None, None, (), {}
    error = body.get("error")
    if isinstance(error, str):
        description = body.get("error_description")
        return (description if isinstance(description, str) else error), None, (error,), {}
    if not isinstance(error, dict):
        return None, None, (), {}
    message = error.get("message") if isinstance(error.get("message"), str) else None
    status = error.get("status") if isinstance(error.get("status"), str) else None
    reasons: list[str] = []
    metadata: dict[str, Any] = {}
    for item in [*_dicts(error.get("details")), *_dicts(error.get("errors"))]:
        if isinstance(item.get("reason"), str):
            reasons.append(item["reason"])
        if isinstance(item.get("metadata"), dict):
            metadata.update(item["metadata"])
    return message, status, tuple(reasons), metadata


def _dicts(value: object) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def clean(text: str, secrets: Sequence[str] = ()) -> str:
    """Google's words, safe for a client: no token-like text, one line, not too long."""
    text = redact.redact_text(text, secrets)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= GOOGLE_MESSAGE_MAX else text[: GOOGLE_MESSAGE_MAX - 3] + "..."


def describe_refusal(status: int, data: bytes | str, *, chain: Sequence[str], caller: str | None,
                     permission: str, secrets: Sequence[str] = ()) -> TokenError:
    """The TokenError for a non-200 answer from IAM Credentials (a pure function)."""
    raw_message, google_status, reasons, metadata = google_error(data)
    said = clean(raw_message, secrets) if raw_message else None
    who = caller or "the proxy's credentials"
    target = chain[-1]
    cause = {"cause_type": f"HTTP {status}" + (f" {google_status}" if google_status else ""),
             "cause_message": said}
    text = (raw_message or "").lower()
    if status == 401:
        return TokenError(
            f"IAM Credentials rejected the token of {who} as invalid or expired when asked to "
            f"impersonate {target}: renew the proxy's own credentials (for a gcloud user, run "
            "'gcloud auth application-default login' again).",
            "impersonation_unauthenticated", **cause)
    if status == 403 and ("SERVICE_DISABLED" in reasons or "has not been used in project" in text
                          or "is disabled" in text):
        return TokenError(
            "The IAM Service Account Credentials API is disabled in the project of "
            f"{who}: enable it with 'gcloud services enable iamcredentials.googleapis.com'"
            + (f" ({said})." if said else "."),
            "iam_api_disabled", **cause)
    if status == 403 and ("ACCESS_TOKEN_SCOPE_INSUFFICIENT" in reasons or "insufficient authentication scopes" in text):
        return TokenError(
            f"IAM refused to let {who} impersonate {describe_chain(chain)} because its token lacks "
            "the https://www.googleapis.com/auth/cloud-platform scope: give the proxy's own "
            "credentials that scope.",
            "impersonation_denied", **cause)
    if status == 403:
        needed = metadata.get("permission") if isinstance(metadata.get("permission"), str) else permission
        hops = "".join(f"; {a} needs it on {b}" for a, b in itertools.pairwise(chain))
        return TokenError(
            f"IAM refused to let {who} impersonate {describe_chain(chain)}: "
            f"{caller or 'the caller'} needs {TOKEN_CREATOR} (permission {needed}) on {chain[0]}{hops}.",
            "impersonation_denied", **cause)
    if status == 404:
        mentioned = {m.rstrip(".").lower() for m in _MENTIONED_EMAIL.findall(text)}
        named = [email for email in chain if email.lower() in mentioned]
        if named:
            missing = f"Service account {named[0]} does not exist"
        elif len(chain) == 1:
            missing = f"Service account {target} does not exist"
        else:
            missing = f"One of the service accounts {', '.join(chain)} does not exist"
        return TokenError(f"{missing} (IAM Credentials answered 404): check the impersonation chain.",
                          "impersonation_not_found", **cause)
    if status == 400:
        return TokenError(
            f"IAM Credentials refused the request to impersonate {describe_chain(chain)} as invalid"
            + (f": {said}" if said else "."),
            "impersonation_invalid", **cause)
    if status == 429 or status >= 500:
        return TokenError(
            f"IAM Credentials is unavailable (HTTP {status}) for impersonating {target}; the proxy "
            "will retry" + (f": {said}" if said else "."),
            "iam_unavailable", **cause)
    return TokenError(
        f"IAM Credentials gave an unexpected answer (HTTP {status}) when asked to impersonate {target}"
        + (f": {said}" if said else "."),
        "iam_bad_answer", **cause)


# -- reading successful answers ------------------------------------------------------------------


def parse_expire_time(text: str) -> datetime.datetime:
    """RFC 3339 ``expireTime`` (``Z`` or an offset, up to nanoseconds) as a naive UTC datetime.

    Raises:
        ValueError: not such a timestamp.
    """
    text = text.strip()
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text, re.IGNORECASE)
    if match is None:
        raise ValueError("not an RFC 3339 timestamp")
    whole, fraction, zone = match.groups()
    when = datetime.datetime.fromisoformat(whole + (fraction or "")[:7] + ("+00:00" if zone in "Zz" else zone))
    return when.astimezone(datetime.UTC).replace(tzinfo=None)


def jwt_expiry(token: str) -> datetime.datetime:
    """The ``exp`` claim of a compact JWS, unverified (the upstream verifies), as naive UTC.

    Raises:
        ValueError: not a JWT with a numeric ``exp``.
    """
    claims = jwt_claims(token)
    if claims is None:
        raise ValueError("not a compact JWT with a JSON payload")
    exp: Any = claims.get("exp")
    if type(exp) not in (int, float):  # a bool is an int too
        raise ValueError("the JWT has no numeric exp claim")
    try:
        return datetime.datetime.fromtimestamp(exp, datetime.UTC).replace(tzinfo=None)
    except (OverflowError, OSError) as e:
        raise ValueError("the JWT's exp claim is out of range") from e


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


# -- credentials ------------------------------------------------------------------------------------


class _IamCredentials:
    """What both IAM Credentials methods share: the POST, the error mapping, the google-auth face."""

    method = ""
    permission = ""

    def __init__(self, source_token: SourceToken, chain: Sequence[str] | str, *, caller: str | None) -> None:
        self.chain = parse_chain(chain)
        self.principal = self.chain[-1]
        self.caller = caller
        self.token: str | None = None
        self.expiry: datetime.datetime | None = None
        self._source: Callable[[Any], str] = lambda _request: source_token()

    @property
    def service_account_email(self) -> str:
        """The impersonated account: what ``credentials.principal()`` names."""
        return self.principal

    @property
    def delegates(self) -> list[str]:
        """The chain before the target, in IAM's resource syntax."""
        return [DELEGATE_PREFIX + email for email in self.chain[:-1]]

    @property
    def expired(self) -> bool:
        return self.expiry is not None and _utcnow() >= self.expiry - EXPIRY_SKEW

    @property
    def valid(self) -> bool:
        return self.token is not None and not self.expired

    def apply(self, headers: dict[str, str], token: str | None = None) -> None:
        headers["authorization"] = f"Bearer {token or self.token}"

    def refresh(self, request: Any) -> None:
        """Ask IAM Credentials for a new token with the caller's token. Raises TokenError."""
        source = self._source(request)
        url = IAM_URL.format(self.principal, self.method)
        headers = {"authorization": f"Bearer {source}", "content-type": "application/json"}
        body = json.dumps(self._body()).encode()
        try:
            response = request(url, "POST", body, headers, TIMEOUT)
        except TokenError:
            raise
        except Exception as e:  # noqa: BLE001 - any transport failure is "IAM is unreachable"
            wait = getattr(e, "seconds", None)  # token_transport.RetryAfter (not imported: it pulls mitmproxy)
            if type(e).__name__ == "RetryAfter" and isinstance(wait, int | float):
                raise TokenError(
                    f"IAM Credentials asked the proxy to wait {wait:g} s before impersonating "
                    f"{self.principal} again (rate limited).", "iam_unavailable", cause_type="RetryAfter") from None
            detail = clean(str(e), [source])
            raise TokenError(
                f"IAM Credentials could not be reached to impersonate {self.principal}: {detail}",
                "iam_unavailable", cause_type=type(e).__name__, cause_message=detail) from None
        if response.status != 200:
            raise describe_refusal(response.status, response.data, chain=self.chain, caller=self.caller,
                                   permission=self.permission, secrets=[source])
        try:
            answer = json.loads(response.data)
            self.token, self.expiry = self._read(answer if isinstance(answer, dict) else {})
        except (ValueError, UnicodeDecodeError, TypeError) as e:
            # The body may hold a token: say what was wrong with it, never what it was.
            why = str(e) if isinstance(e, _BadAnswer) else "not JSON"
            raise TokenError(
                f"IAM Credentials answered {self.method} for {self.principal} with something that is "
                f"not a token ({why}).", "iam_bad_answer", cause_type="HTTP 200") from None

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def _read(self, answer: dict[str, Any]) -> tuple[str, datetime.datetime]:
        raise NotImplementedError


class _BadAnswer(ValueError):
    """A 200 answer without the fields we need; its text names the field, never a value."""


class ImpersonatedCredentials(_IamCredentials):
    """An access token of ``chain[-1]``, through delegates ``chain[:-1]`` (``generateAccessToken``)."""

    method = "generateAccessToken"
    permission = ACCESS_PERMISSION

    def __init__(self, source_token: SourceToken, chain: Sequence[str] | str, scopes: Sequence[str], *,
                 lifetime: int = 3600, caller: str | None = None) -> None:
        super().__init__(source_token, chain, caller=caller)
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"The impersonated token lifetime must be 1 to {MAX_LIFETIME} seconds, not {lifetime}.")
        if not scopes:
            raise ValueError("Impersonation needs at least one OAuth scope.")
        self.scopes = tuple(scopes)
        self.lifetime = lifetime

    def _body(self) -> dict[str, Any]:
        return {"delegates": self.delegates, "scope": list(self.scopes), "lifetime": f"{self.lifetime}s"}

    def _read(self, answer: dict[str, Any]) -> tuple[str, datetime.datetime]:
        token, expire_time = answer.get("accessToken"), answer.get("expireTime")
        if not isinstance(token, str) or not token:
            raise _BadAnswer("no accessToken")
        if not isinstance(expire_time, str):
            raise _BadAnswer("no expireTime")
        try:
            return token, parse_expire_time(expire_time)
        except ValueError:
            raise _BadAnswer("expireTime is not an RFC 3339 timestamp") from None


class ImpersonatedIdTokenCredentials(_IamCredentials):
    """An OIDC ID token of ``chain[-1]`` for ``audience`` (``generateIdToken``)."""

    method = "generateIdToken"
    permission = ID_PERMISSION

    def __init__(self, source_token: SourceToken, chain: Sequence[str] | str, audience: str, *,
                 include_email: bool = True, caller: str | None = None) -> None:
        super().__init__(source_token, chain, caller=caller)
        self.audience = audience
        self.include_email = include_email

    @classmethod
    def from_source_credentials(cls, source: Any, chain: Sequence[str] | str, audience: str, *,
                                include_email: bool = True,
                                caller: str | None = None) -> ImpersonatedIdTokenCredentials:
        """Source token from google-auth credentials (an impersonated_service_account ADC's
        ``source_credentials``), refreshed through the same ``request`` as the IAM call."""
        creds = cls(_no_source, chain, audience, include_email=include_email, caller=caller)
        creds._source = lambda request: _fresh_token(source, request)
        return creds

    def _body(self) -> dict[str, Any]:
        return {"audience": self.audience, "delegates": self.delegates, "includeEmail": self.include_email}

    def _read(self, answer: dict[str, Any]) -> tuple[str, datetime.datetime]:
        token = answer.get("token")
        if not isinstance(token, str) or not token:
            raise _BadAnswer("no token")
        try:
            return token, jwt_expiry(token)
        except ValueError:
            raise _BadAnswer("the token is not a JWT with an exp claim") from None


def _no_source() -> str:
    raise AssertionError("replaced by from_source_credentials")


def _fresh_token(creds: Any, request: Any) -> str:
    """The access token of google-auth ``creds``, refreshed through ``request`` when not valid."""
    if not creds.valid:
        creds.refresh(request)
    token = creds.token
    if not token:
        raise TokenError("The proxy's own credentials returned no access token to impersonate with.", "no_token")
    return str(token)
