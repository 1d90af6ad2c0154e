"""Impersonation through IAM Credentials: the chain, the wire format, and IAM's refusals as sentences.

Most tests use a stub ``request`` (google-auth's transport call signature) answering exactly what
Google answers; the end-to-end tests reach the fake Google through the proxy's own transport.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from google.auth import exceptions as gexc

from addons.impersonation import (
    ACCESS_PERMISSION,
    ID_PERMISSION,
    ImpersonatedCredentials,
    ImpersonatedIdTokenCredentials,
    describe_chain,
    describe_refusal,
    jwt_expiry,
    parse_chain,
    parse_expire_time,
)
from addons.token_cache import TokenCache, TokenError
from fakegoogle.iamcredentials import permission_denied_body

SOURCE = "ya29.source-token-of-the-caller-0123456789"
ISSUED = "ya29.impersonated-token-abcdefghijklmnop"
A = "a-sa@proj.iam.gserviceaccount.com"
B = "b-sa@proj.iam.gserviceaccount.com"
C = "c-sa@proj.iam.gserviceaccount.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
IAM = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"


def google_403(permission: str = ACCESS_PERMISSION) -> bytes:
    """IAM Credentials' exact answer when the caller lacks Token Creator on the account."""
    return json.dumps(permission_denied_body(permission)).encode()


def google_json(code: int, status: str, message: str, **extra: Any) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status, **extra}}).encode()


def make_jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@dataclass
class Response:
    status: int
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    url: str
    method: str
    body: bytes
    headers: dict[str, str]
    timeout: float | None

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class StubRequest:
    """google.auth.transport.Request's call signature; answers (or raises) what it is given."""

    def __init__(self, *answers: Response | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[Call] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Response:
        self.calls.append(Call(url, method, body, dict(headers or {}), timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def ok_access(token: str = ISSUED, expire_time: str = "2031-02-03T04:05:06Z") -> Response:
    return Response(200, json.dumps({"accessToken": token, "expireTime": expire_time}).encode())


def impersonate(chain: str = f"{A},{B},{C}", **kwargs: Any) -> ImpersonatedCredentials:
    return ImpersonatedCredentials(lambda: SOURCE, parse_chain(chain), SCOPES, **kwargs)


def refusal(creds: Any, request: StubRequest) -> TokenError:
    with pytest.raises(TokenError) as info:
        creds.refresh(request)
    assert SOURCE not in str(info.value) and SOURCE not in str(info.value.cause_message)
    return info.value


# -- parse_chain -----------------------------------------------------------------------------------


def test_parse_chain_reads_gcloud_syntax_and_lists() -> None:
    assert parse_chain(f" {A} , {B},{C} ") == (A, B, C)
    assert parse_chain([A, f"{B},{C}"]) == (A, B, C)
    assert parse_chain(C) == (C,)
    # ADC files may carry IAM's resource syntax for delegates.
    assert parse_chain([f"projects/-/serviceAccounts/{A}", C]) == (A, C)


@pytest.mark.parametrize(("text", "words"), [
    ("", "is empty"),
    (" , ", "is empty"),
    ([], "is empty"),
    (f"{A},,{C}", "has an empty entry"),
    (f"{A},{C},", "has an empty entry"),
    (f"{A},not-an-email", "names 'not-an-email', which is not a service account email"),
    (f"{A},b c@proj.iam.gserviceaccount.com", "is not a service account email"),
    (f"{A},x@y/z", "is not a service account email"),
    (f"{A},{B},{A.upper()}", f"loops: {A.upper()} appears twice"),
    (f"{A},{B},{C},{B}", f"loops: {B} appears twice"),
])
def test_parse_chain_errors_name_the_bad_part(text: Any, words: str) -> None:
    with pytest.raises(ValueError, match="^The impersonation chain") as info:
        parse_chain(text)
    assert words in str(info.value)
    assert str(info.value).count(". ") == 0  # one sentence


def test_describe_chain_names_target_then_delegates() -> None:
    assert describe_chain((C,)) == C
    assert describe_chain((A, B, C)) == f"{C} (via {A}, {B})"


# -- the wire format -------------------------------------------------------------------------------------


def test_generate_access_token_request_and_answer() -> None:
    request = StubRequest(ok_access(expire_time="2031-02-03T04:05:06.123456789Z"))
    creds = impersonate(lifetime=1800)
    creds.refresh(request)

    [call] = request.calls
    assert call.url == f"{IAM}{C}:generateAccessToken"
    assert call.method == "POST"
    assert call.headers["authorization"] == f"Bearer {SOURCE}"
    assert call.headers["content-type"] == "application/json"
    assert call.json == {
        "delegates": [f"projects/-/serviceAccounts/{A}", f"projects/-/serviceAccounts/{B}"],
        "scope": SCOPES,
        "lifetime": "1800s",
    }
    assert call.timeout is not None
    assert creds.token == ISSUED
    assert creds.expiry == datetime.datetime(2031, 2, 3, 4, 5, 6, 123456)  # naive UTC
    assert creds.expiry.tzinfo is None
    headers: dict[str, str] = {}
    creds.apply(headers)
    assert headers == {"authorization": f"Bearer {ISSUED}"}
    assert (creds.principal, creds.chain, creds.service_account_email) == (C, (A, B, C), C)
    assert creds.valid and not creds.expired


def test_no_delegates_and_default_lifetime() -> None:
    request = StubRequest(ok_access())
    ImpersonatedCredentials(lambda: SOURCE, [C], SCOPES).refresh(request)
    assert request.calls[0].json == {"delegates": [], "scope": SCOPES, "lifetime": "3600s"}


def test_expire_time_with_offset_is_converted_to_utc() -> None:
    assert parse_expire_time("2031-02-03T04:05:06+02:00") == datetime.datetime(2031, 2, 3, 2, 5, 6)
    with pytest.raises(ValueError):
        parse_expire_time("2031-02-03 04:05:06")  # no zone: not RFC 3339


def test_expired_credentials_are_not_valid() -> None:
    creds = impersonate()
    creds.refresh(StubRequest(ok_access(expire_time="2001-01-01T00:00:00Z")))
    assert creds.expired and not creds.valid


@pytest.mark.parametrize("lifetime", [0, -1, 43201])
def test_lifetime_out_of_iam_range_is_refused(lifetime: int) -> None:
    with pytest.raises(ValueError, match="lifetime"):
        impersonate(lifetime=lifetime)


def test_the_source_token_is_fetched_for_every_refresh() -> None:
    tokens = iter(["ya29.first-source-token", "ya29.second-source-token"])
    creds = ImpersonatedCredentials(lambda: next(tokens), [C], SCOPES)
    request = StubRequest(ok_access(), ok_access())
    creds.refresh(request)
    creds.refresh(request)
    assert [c.headers["authorization"] for c in request.calls] == [
        "Bearer ya29.first-source-token", "Bearer ya29.second-source-token"]


def test_a_token_error_from_the_source_passes_through_unchanged() -> None:
    error = TokenError("No Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS.", "no_credentials")

    def source() -> str:
        raise error

    request = StubRequest()
    with pytest.raises(TokenError) as info:
        ImpersonatedCredentials(source, [C], SCOPES).refresh(request)
    assert info.value is error
    assert request.calls == []


# -- IAM's refusals -----------------------------------------------------------------------------------


def test_403_names_caller_role_permission_and_every_hop() -> None:
    error = refusal(impersonate(caller="dev@example.com"), StubRequest(Response(403, google_403())))
    assert error.reason == "impersonation_denied"
    assert str(error) == (
        f"IAM refused to let dev@example.com impersonate {C} (via {A}, {B}): dev@example.com needs "
        f"roles/iam.serviceAccountTokenCreator (permission {ACCESS_PERMISSION}) on {A}; "
        f"{A} needs it on {B}; {B} needs it on {C}.")
    assert error.cause_type == "HTTP 403 PERMISSION_DENIED"
    assert error.cause_message == f"Permission '{ACCESS_PERMISSION}' denied on resource (or it may not exist)."


def test_403_without_a_known_caller() -> None:
    error = refusal(impersonate(C), StubRequest(Response(403, google_403())))
    assert str(error) == (
        f"IAM refused to let the proxy's credentials impersonate {C}: the caller needs "
        f"roles/iam.serviceAccountTokenCreator (permission {ACCESS_PERMISSION}) on {C}.")


def test_403_for_a_disabled_api_says_to_enable_it() -> None:
    body = google_json(403, "PERMISSION_DENIED",
                       "IAM Service Account Credentials API has not been used in project 123 before or it is "
                       "disabled. Enable it by visiting https://console.developers.google.com/apis/api/"
                       "iamcredentials.googleapis.com/overview?project=123 then retry.",
                       details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
                                 "domain": "googleapis.com", "metadata": {"service": "iamcredentials.googleapis.com"}}])
    error = refusal(impersonate(), StubRequest(Response(403, body)))
    assert error.reason == "iam_api_disabled"
    assert "gcloud services enable iamcredentials.googleapis.com" in str(error)


def test_403_for_missing_scope_says_so() -> None:
    body = google_json(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.",
                       details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com"}])
    error = refusal(impersonate(), StubRequest(Response(403, body)))
    assert error.reason == "impersonation_denied"
    assert "lacks the https://www.googleapis.com/auth/cloud-platform scope" in str(error)


def test_404_names_the_missing_account() -> None:
    body = google_json(404, "NOT_FOUND", f"Not found; Gaia id not found for email {B}")
    error = refusal(impersonate(), StubRequest(Response(404, body)))
    assert error.reason == "impersonation_not_found"
    assert str(error).startswith(f"Service account {B} does not exist")


def test_404_without_a_name_blames_the_target_or_the_chain() -> None:
    body = google_json(404, "NOT_FOUND", "Requested entity was not found.")
    assert str(refusal(impersonate(C), StubRequest(Response(404, body)))).startswith(
        f"Service account {C} does not exist")
    assert str(refusal(impersonate(), StubRequest(Response(404, body)))).startswith(
        f"One of the service accounts {A}, {B}, {C} does not exist")


def test_401_says_the_source_token_was_rejected() -> None:
    body = google_json(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    error = refusal(impersonate(caller="dev@example.com"), StubRequest(Response(401, body)))
    assert error.reason == "impersonation_unauthenticated"
    assert "rejected the token of dev@example.com" in str(error)


def test_400_quotes_google() -> None:
    body = google_json(400, "INVALID_ARGUMENT", "Lifetime must be between 1s and 3600s.")
    error = refusal(impersonate(), StubRequest(Response(400, body)))
    assert error.reason == "impersonation_invalid"
    assert str(error).endswith("as invalid: Lifetime must be between 1s and 3600s.")


@pytest.mark.parametrize("answer", [
    Response(500, google_json(500, "INTERNAL", "Internal error encountered.")),
    Response(503, b"<html><body>Service Unavailable</body></html>"),
    Response(429, google_json(429, "RESOURCE_EXHAUSTED", "Quota exceeded.")),
])
def test_server_errors_are_iam_unavailable(answer: Response) -> None:
    error = refusal(impersonate(), StubRequest(answer))
    assert error.reason == "iam_unavailable"
    assert "<html>" not in str(error)
    assert f"(HTTP {answer.status})" in str(error)


def test_transport_errors_are_iam_unavailable_and_redacted() -> None:
    # A transport that (wrongly) echoes the request headers must not leak the source token.
    failure = gexc.TransportError(f"Read timed out. headers={{'authorization': 'Bearer {SOURCE}'}}")
    error = refusal(impersonate(), StubRequest(failure))
    assert error.reason == "iam_unavailable"
    assert error.cause_type == "TransportError"
    assert "could not be reached to impersonate" in str(error) and "Read timed out" in str(error)


def test_retry_after_from_the_transport_says_how_long() -> None:
    from addons.token_transport import RetryAfter

    error = refusal(impersonate(), StubRequest(RetryAfter(7)))
    assert error.reason == "iam_unavailable"
    assert str(error) == f"IAM Credentials asked the proxy to wait 7 s before impersonating {C} again (rate limited)."


@pytest.mark.parametrize(("data", "why"), [
    (b"<html>oops</html>", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[]", "no accessToken"),
    (json.dumps({"expireTime": "2031-01-01T00:00:00Z"}).encode(), "no accessToken"),
    (json.dumps({"accessToken": ISSUED}).encode(), "no expireTime"),
    (json.dumps({"accessToken": ISSUED, "expireTime": "tomorrow"}).encode(), "not an RFC 3339 timestamp"),
])
def test_a_200_that_is_not_a_token_answer_is_iam_bad_answer(data: bytes, why: str) -> None:
    creds = impersonate()
    error = refusal(creds, StubRequest(Response(200, data)))
    assert error.reason == "iam_bad_answer"
    assert why in str(error)
    assert ISSUED not in str(error)  # what the body held is never repeated
    assert creds.token is None


def test_token_like_text_in_google_messages_is_redacted() -> None:
    body = google_json(400, "INVALID_ARGUMENT", f"Bad token {SOURCE} and eyJhbGciOi.eyJzdWIiOi.c2ln near ya29.zzz")
    error = refusal(impersonate(), StubRequest(Response(400, body)))
    assert "ya29." not in str(error) and "eyJ" not in str(error)
    assert "ya29." not in str(error.cause_message)


def test_describe_refusal_is_pure_and_takes_oauth_shaped_errors() -> None:
    body = json.dumps({"error": "invalid_token", "error_description": "Token expired."})
    error = describe_refusal(401, body, chain=(C,), caller=None, permission=ACCESS_PERMISSION)
    assert error.reason == "impersonation_unauthenticated"
    assert error.cause_message == "Token expired."


def test_messages_are_one_line_and_bounded() -> None:
    body = google_json(400, "INVALID_ARGUMENT", "line one\nline two\r\n" + "x" * 1000)
    error = refusal(impersonate(), StubRequest(Response(400, body)))
    assert "\n" not in str(error) and len(str(error)) < 400


# -- ID tokens -----------------------------------------------------------------------------------------


def test_generate_id_token_request_and_expiry_from_exp() -> None:
    exp = 1_900_000_000
    id_token = make_jwt({"aud": "https://svc.run.app", "exp": exp, "email": C})
    request = StubRequest(Response(200, json.dumps({"token": id_token}).encode()))
    creds = ImpersonatedIdTokenCredentials(lambda: SOURCE, [A, C], "https://svc.run.app", include_email=False)
    creds.refresh(request)
    [call] = request.calls
    assert call.url == f"{IAM}{C}:generateIdToken"
    assert call.headers["authorization"] == f"Bearer {SOURCE}"
    assert call.json == {"audience": "https://svc.run.app", "delegates": [f"projects/-/serviceAccounts/{A}"],
                         "includeEmail": False}
    assert creds.token == id_token
    assert creds.expiry == datetime.datetime(2030, 3, 17, 17, 46, 40)
    headers: dict[str, str] = {}
    creds.apply(headers)
    assert headers == {"authorization": f"Bearer {id_token}"}


def test_id_token_refusal_names_get_open_id_token() -> None:
    creds = ImpersonatedIdTokenCredentials(lambda: SOURCE, [C], "https://svc.run.app", caller="dev@example.com")
    error = refusal(creds, StubRequest(Response(403, google_403(ID_PERMISSION))))
    assert error.reason == "impersonation_denied"
    assert f"(permission {ID_PERMISSION}) on {C}" in str(error)


@pytest.mark.parametrize("token", ["not-a-jwt", make_jwt({"aud": "x"}), make_jwt({"exp": "soon"}),
                                   make_jwt({"exp": True}), "a.!!!.c"])
def test_an_id_token_without_exp_is_iam_bad_answer(token: str) -> None:
    creds = ImpersonatedIdTokenCredentials(lambda: SOURCE, [C], "https://svc.run.app")
    error = refusal(creds, StubRequest(Response(200, json.dumps({"token": token}).encode())))
    assert error.reason == "iam_bad_answer"
    assert token not in str(error)


def test_jwt_expiry() -> None:
    assert jwt_expiry(make_jwt({"exp": 0})) == datetime.datetime(1970, 1, 1)
    with pytest.raises(ValueError):
        jwt_expiry(make_jwt({"exp": 10**20}))


# -- through TokenCache, as the proxy uses it -------------------------------------------------------------


def test_token_cache_keeps_the_sentence_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    messages: list[str] = []
    request = StubRequest(Response(403, google_403()), ok_access())
    cache = TokenCache(lambda: impersonate(caller="dev@example.com"), request, backoff_base=0, min_fetch_interval=0)
    cache.on_change = messages.append
    with pytest.raises(TokenError) as info:
        cache.get()
    assert info.value.reason == "impersonation_denied"
    assert str(info.value).startswith("IAM refused to let dev@example.com impersonate")
    token = cache.get()
    assert token.value == ISSUED
    assert token.headers == {"authorization": f"Bearer {ISSUED}"}
    assert token.expires_at == datetime.datetime(2031, 2, 3, 4, 5, 6, tzinfo=datetime.UTC).timestamp()
    seen = "\n".join([*messages, caplog.text])
    assert SOURCE not in seen and ISSUED not in seen


# -- against the fake Google -------------------------------------------------------------------------------


@pytest.fixture
def iam_request(fake: Any) -> Callable[..., Any]:
    """The proxy's own transport, with iamcredentials.googleapis.com resolved to the fake."""
    from addons.resolve import parse_resolve_rules
    from addons.token_transport import make_request

    host, port = fake.googleapis_addr

    def make(timeout: float = 10.0) -> Any:
        return make_request(parse_resolve_rules([f"*.googleapis.com={host}:{port}"]), str(fake.google_ca_pem),
                            timeout=timeout)

    return make


CALLER = "caller-sa@fake-project.iam.gserviceaccount.com"
HOP = "hop-sa@fake-project.iam.gserviceaccount.com"
TARGET = "target-sa@fake-project.iam.gserviceaccount.com"


def test_fake_generate_access_token_through_a_chain(fake: Any, iam_request: Callable[..., Any],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.grant_token_creator(CALLER, HOP)
    fake.grant_token_creator(HOP, TARGET)
    source = fake.issue_token(principal=CALLER)
    creds = ImpersonatedCredentials(lambda: source, parse_chain(f"{HOP},{TARGET}"), SCOPES, caller=CALLER)
    before = fake.token_requests_to("generate_access_token")
    creds.refresh(iam_request())
    assert fake.token_requests_to("generate_access_token") == before + 1
    assert creds.token and fake.token_kind(creds.token) == "iamcredentials"
    assert fake.principal_of(creds.token) == TARGET
    assert creds.expiry is not None
    left = (creds.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)).total_seconds()
    assert 3500 < left <= 3600
    assert source not in caplog.text and creds.token not in caplog.text


def test_fake_missing_hop_grant_is_denied_with_the_whole_chain(fake: Any, iam_request: Callable[..., Any],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.grant_token_creator(CALLER, HOP)
    fake.add_service_account(TARGET)  # exists, but HOP may not act as it
    source = fake.issue_token(principal=CALLER)
    creds = ImpersonatedCredentials(lambda: source, [HOP, TARGET], SCOPES, caller=CALLER)
    with pytest.raises(TokenError) as info:
        creds.refresh(iam_request())
    assert info.value.reason == "impersonation_denied"
    assert str(info.value) == (
        f"IAM refused to let {CALLER} impersonate {TARGET} (via {HOP}): {CALLER} needs "
        f"roles/iam.serviceAccountTokenCreator (permission {ACCESS_PERMISSION}) on {HOP}; "
        f"{HOP} needs it on {TARGET}.")
    assert info.value.cause_type == "HTTP 403 PERMISSION_DENIED"
    assert source not in caplog.text


def test_fake_unknown_account_is_not_found(fake: Any, iam_request: Callable[..., Any]) -> None:
    source = fake.issue_token(principal=CALLER)
    missing = "nobody@fake-project.iam.gserviceaccount.com"
    creds = ImpersonatedCredentials(lambda: source, [missing], SCOPES)
    with pytest.raises(TokenError) as info:
        creds.refresh(iam_request())
    assert info.value.reason == "impersonation_not_found"
    assert str(info.value).startswith(f"Service account {missing} does not exist")
    assert source not in str(info.value)


def test_fake_rejects_a_revoked_source_token(fake: Any, iam_request: Callable[..., Any]) -> None:
    fake.grant_token_creator(CALLER, TARGET)
    source = fake.issue_token(principal=CALLER)
    fake.revoke(source)
    with pytest.raises(TokenError) as info:
        ImpersonatedCredentials(lambda: source, [TARGET], SCOPES).refresh(iam_request())
    assert info.value.reason == "impersonation_unauthenticated"
    assert source not in str(info.value)


@pytest.mark.parametrize(("mode", "cause"), [("500", "HTTP 500"), ("hang", "TransportError")])
def test_fake_outage_and_hang_are_iam_unavailable(fake: Any, iam_request: Callable[..., Any],
                                                  mode: str, cause: str) -> None:
    fake.grant_token_creator(CALLER, TARGET)
    source = fake.issue_token(principal=CALLER)
    fake.set_token_failure(mode)
    try:
        with pytest.raises(TokenError) as info:
            ImpersonatedCredentials(lambda: source, [TARGET], SCOPES).refresh(iam_request(timeout=0.5))
    finally:
        fake.set_token_failure(None)
    assert info.value.reason == "iam_unavailable"
    assert info.value.cause_type is not None and info.value.cause_type.startswith(cause)
    assert source not in str(info.value)
