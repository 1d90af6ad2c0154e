"""ID tokens for an audience from each kind of credentials, audience checks, and key files.

Stub transports check the wire format; the fake Google checks that what comes back is an ID
token Google would have signed for the right account and audience.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import google.auth
import pytest
from google.auth import compute_engine, impersonated_credentials
from google.oauth2 import service_account

from addons.id_tokens import id_token_credentials, validate_audience
from addons.impersonation import ID_PERMISSION, ImpersonatedIdTokenCredentials
from addons.key_files import KeyFileError, check_key_file, load_key_file
from addons.policy_model import default_audience
from addons.token_cache import TokenError
from tests.test_impersonation import Response, StubRequest, make_jwt

AUDIENCE = "https://hello-abc123-uc.a.run.app"
CALLER = "caller-sa@fake-project.iam.gserviceaccount.com"
TARGET = "target-sa@fake-project.iam.gserviceaccount.com"
# An impersonated_service_account file opens its target to any caller for the whole session:
# never write one for an account whose grants a test checks.
ADC_TARGET = "adc-target-sa@fake-project.iam.gserviceaccount.com"
SOURCE = "ya29.source-token-0123456789abcdef"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
EXP = 1_900_000_000
EXP_UTC = datetime.datetime(2030, 3, 17, 17, 46, 40)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# -- audiences ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    (AUDIENCE, AUDIENCE),
    ("http://localhost:8080/api", "http://localhost:8080/api"),
    (f"  {AUDIENCE}  ", AUDIENCE),
    ("123456789012-abcdef0123.apps.googleusercontent.com", "123456789012-abcdef0123.apps.googleusercontent.com"),
])
def test_validate_audience_accepts_urls_and_client_ids(text: str, expected: str) -> None:
    assert validate_audience(text) == expected


@pytest.mark.parametrize("text", [
    "", "hello.a.run.app", "ftp://hello.a.run.app", "https://", "https:///path", "https://user@host",
    "https://a b.run.app", "abc.apps.googleusercontent.com", "123-abc.apps.googleusercontent.com.evil",
    "https://[::1",
])
def test_validate_audience_refuses_anything_else_in_one_sentence(text: str) -> None:
    with pytest.raises(ValueError, match="^The ID token audience") as info:
        validate_audience(text)
    assert str(info.value).count(". ") == 0


def test_default_audience_is_the_https_origin() -> None:
    assert default_audience("Hello-ABC.a.run.app.") == "https://hello-abc.a.run.app"
    assert default_audience("Hello-ABC.a.run.app", "/greet/x?y=1") == "https://hello-abc.a.run.app"
    assert default_audience("::1") == "https://[::1]"


@pytest.mark.parametrize("path, audience", [
    ("/hello", "https://r-p.cloudfunctions.net/hello"),
    ("/hello/sub/path?x=1", "https://r-p.cloudfunctions.net/hello"),
    ("/hello_World-2?x", "https://r-p.cloudfunctions.net/hello_World-2"),
    ("/", "https://r-p.cloudfunctions.net"),  # no function named: the origin
    ("/%68ello", "https://r-p.cloudfunctions.net"),  # not a function name: never a made-up audience
    ("/2fast", "https://r-p.cloudfunctions.net"),
    ("/../x", "https://r-p.cloudfunctions.net"),
])
def test_a_cloud_functions_default_audience_is_the_function_url(path: str, audience: str) -> None:
    assert default_audience("R-P.cloudfunctions.net.", path) == audience


# -- which credentials mint ID tokens ------------------------------------------------------------------


def test_a_chain_uses_generate_id_token_with_the_callers_token() -> None:
    creds = id_token_credentials(None, AUDIENCE, source_token=lambda: SOURCE, chain=[TARGET], include_email=False)
    assert isinstance(creds, ImpersonatedIdTokenCredentials)
    request = StubRequest(Response(200, json.dumps({"token": make_jwt({"exp": EXP})}).encode()))
    creds.refresh(request)
    [call] = request.calls
    assert call.url.endswith(f"/serviceAccounts/{TARGET}:generateIdToken")
    assert call.headers["authorization"] == f"Bearer {SOURCE}"
    assert call.json == {"audience": AUDIENCE, "delegates": [], "includeEmail": False}
    assert creds.expiry == EXP_UTC


def test_a_chain_needs_a_source_token() -> None:
    with pytest.raises(ValueError, match="source token"):
        id_token_credentials(None, AUDIENCE, chain=[TARGET])


def test_a_chain_refusal_names_the_base_principal(sa_key: Path) -> None:
    base = service_account.Credentials.from_service_account_file(str(sa_key))
    creds = id_token_credentials(base, AUDIENCE, source_token=lambda: SOURCE, chain=[TARGET])
    body = json.dumps({"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "denied"}}).encode()
    with pytest.raises(TokenError) as info:
        creds.refresh(StubRequest(Response(403, body)))
    assert f"IAM refused to let {base.service_account_email} impersonate {TARGET}" in str(info.value)
    assert f"(permission {ID_PERMISSION})" in str(info.value)


def test_a_service_account_key_signs_a_jwt_grant_with_target_audience(sa_key: Path) -> None:
    base = service_account.Credentials.from_service_account_file(str(sa_key), scopes=SCOPES)
    creds = id_token_credentials(base, AUDIENCE)
    assert isinstance(creds, service_account.IDTokenCredentials)
    id_token = make_jwt({"aud": AUDIENCE, "exp": EXP})
    request = StubRequest(Response(200, json.dumps({"id_token": id_token}).encode()))
    creds.refresh(request)
    [call] = request.calls
    assert call.url == base._token_uri and call.method == "POST"
    form = parse_qs(call.body.decode() if isinstance(call.body, bytes) else call.body)
    assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    claims = jwt_claims(form["assertion"][0])
    assert claims["target_audience"] == AUDIENCE and claims["iss"] == base.service_account_email
    assert "scope" not in claims  # an ID token grant, not an access token grant
    assert (creds.token, creds.expiry) == (id_token, EXP_UTC)


def test_the_metadata_server_mints_full_format_tokens_without_a_request_up_front() -> None:
    creds = id_token_credentials(compute_engine.Credentials(), AUDIENCE)
    assert isinstance(creds, compute_engine.IDTokenCredentials)
    id_token = make_jwt({"aud": AUDIENCE, "exp": EXP})
    request = StubRequest(Response(200, id_token.encode(), {"content-type": "application/text",
                                                            "metadata-flavor": "Google"}))
    creds.refresh(request)
    [call] = request.calls
    url = urlsplit(call.url)
    assert url.path == "/computeMetadata/v1/instance/service-accounts/default/identity"
    assert parse_qs(url.query) == {"audience": [AUDIENCE], "format": ["full"]}
    assert call.headers["metadata-flavor"] == "Google"
    assert (creds.token, creds.expiry) == (id_token, EXP_UTC)


def test_an_impersonated_adc_calls_generate_id_token_with_its_source(fake: Any, tmp_path: Path) -> None:
    path = fake.write_impersonated_service_account(tmp_path / "imp.json", target=ADC_TARGET)
    info = json.loads(path.read_text())
    info["delegates"] = [f"projects/-/serviceAccounts/{CALLER}"]
    base = impersonated_credentials.Credentials.from_impersonated_service_account_info(info, scopes=SCOPES)
    creds = id_token_credentials(base, AUDIENCE)
    assert isinstance(creds, ImpersonatedIdTokenCredentials)
    assert (creds.chain, creds.caller) == ((CALLER, ADC_TARGET), "user@example.com")
    request = StubRequest(
        Response(200, json.dumps({"access_token": SOURCE, "expires_in": 3600}).encode()),  # the user's refresh
        Response(200, json.dumps({"token": make_jwt({"exp": EXP})}).encode()),
    )
    creds.refresh(request)
    refresh, generate = request.calls
    assert refresh.url.endswith("/token")
    assert generate.headers["authorization"] == f"Bearer {SOURCE}"
    assert generate.json["delegates"] == [f"projects/-/serviceAccounts/{CALLER}"]


@pytest.mark.parametrize(("write", "words"), [
    (lambda fake, d: fake.write_authorized_user(d / "user.json"),
     ("gcloud user credentials cannot mint ID tokens for an arbitrary audience; use "
     "--impersonate-service-account SA so the proxy mints them as that service account.")),
    (lambda fake, d: fake.write_external_account(d / "wif.json"),
     "Workload or workforce identity federation credentials cannot mint ID tokens"),
    (lambda fake, d: fake.write_external_account_authorized_user(d / "wf.json"),
     "Workload or workforce identity federation credentials cannot mint ID tokens"),
])
def test_credentials_that_cannot_mint_id_tokens_say_what_to_do(
    fake: Any, tmp_path: Path, write: Callable[..., Path], words: str,
) -> None:
    base, _ = google.auth.load_credentials_from_file(str(write(fake, tmp_path)))
    with pytest.raises(TokenError) as info:
        id_token_credentials(base, AUDIENCE)
    assert info.value.reason == "id_token_unsupported"
    assert str(info.value).startswith(words)
    assert "--impersonate-service-account SA" in str(info.value)


def test_no_credentials_at_all_is_unsupported() -> None:
    with pytest.raises(TokenError) as info:
        id_token_credentials(None, AUDIENCE)
    assert info.value.reason == "id_token_unsupported"


# -- against the fake Google ---------------------------------------------------------------------------


@pytest.fixture
def google_request(fake: Any) -> Any:
    """The proxy's own transport; *.googleapis.com and the metadata server reach the fake."""
    from addons.resolve import parse_resolve_rules
    from addons.token_transport import make_request

    g_host, g_port = fake.googleapis_addr
    request = make_request(parse_resolve_rules([f"*.googleapis.com={g_host}:{g_port}"]), str(fake.google_ca_pem))
    m_host, m_port = fake.metadata_addr

    def call(url: str, method: str = "GET", body: Any = None, headers: Any = None,
             timeout: float | None = None, **kwargs: Any) -> Any:
        # google-auth fixed the metadata host at import; send its requests to the fake's.
        parts = urlsplit(url)
        if parts.path.startswith("/computeMetadata/"):
            url = parts._replace(netloc=f"{m_host}:{m_port}").geturl()
        return request(url, method, body, headers, timeout, **kwargs)

    return call


def check(fake: Any, token: str | None, email: str, caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    assert token
    claims: dict[str, Any] = fake.verify_id_token(token, AUDIENCE)
    assert claims["aud"] == AUDIENCE
    assert claims["email"] == email
    assert token not in caplog.text
    return claims


def test_fake_service_account_key_id_token(fake: Any, sa_key: Path, google_request: Any,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    base = service_account.Credentials.from_service_account_file(str(sa_key), scopes=SCOPES)
    creds = id_token_credentials(base, AUDIENCE)
    before = fake.token_requests_to("oauth2_id_token")
    creds.refresh(google_request)
    claims = check(fake, creds.token, base.service_account_email, caplog)
    assert fake.token_requests_to("oauth2_id_token") == before + 1
    assert creds.expiry == datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC).replace(tzinfo=None)


def test_fake_chain_id_token(fake: Any, google_request: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hop = "hop-sa@fake-project.iam.gserviceaccount.com"
    fake.grant_token_creator(CALLER, hop)
    fake.grant_token_creator(hop, TARGET)
    source = fake.issue_token(principal=CALLER)
    creds = id_token_credentials(None, AUDIENCE, source_token=lambda: source, chain=[hop, TARGET])
    before = fake.token_requests_to("generate_id_token")
    creds.refresh(google_request)
    claims = check(fake, creds.token, TARGET, caplog)
    assert fake.token_requests_to("generate_id_token") == before + 1
    assert creds.expiry == datetime.datetime.fromtimestamp(claims["exp"], datetime.UTC).replace(tzinfo=None)
    assert source not in caplog.text


def test_fake_chain_id_token_denied(fake: Any, google_request: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_service_account(TARGET)
    source = fake.issue_token(principal=CALLER)
    creds = ImpersonatedIdTokenCredentials(lambda: source, [TARGET], AUDIENCE, caller=CALLER)
    with pytest.raises(TokenError) as info:
        creds.refresh(google_request)
    assert info.value.reason == "impersonation_denied"
    assert str(info.value) == (
        f"IAM refused to let {CALLER} impersonate {TARGET}: {CALLER} needs "
        f"roles/iam.serviceAccountTokenCreator (permission {ID_PERMISSION}) on {TARGET}.")
    assert source not in caplog.text and creds.token is None


def test_fake_metadata_identity_token(fake: Any, google_request: Any, caplog: pytest.LogCaptureFixture) -> None:
    from fakegoogle.metadata import SA_EMAIL

    caplog.set_level(logging.DEBUG)
    creds = id_token_credentials(compute_engine.Credentials(), AUDIENCE)
    before = fake.token_requests_to("metadata_identity")
    creds.refresh(google_request)
    claims = check(fake, creds.token, SA_EMAIL, caplog)
    assert "google" in claims  # format=full: the instance's own claims
    assert fake.token_requests_to("metadata_identity") == before + 1


def test_fake_impersonated_adc_id_token(fake: Any, tmp_path: Path, google_request: Any,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = fake.write_impersonated_service_account(tmp_path / "imp.json", target=ADC_TARGET)
    base, _ = google.auth.load_credentials_from_file(str(path), scopes=SCOPES)
    creds = id_token_credentials(base, AUDIENCE)
    creds.refresh(google_request)
    check(fake, creds.token, ADC_TARGET, caplog)


# -- key files (a route's credential = { key_file = "PATH" }) --------------------------------------------


def test_check_key_file_names_the_account(sa_key: Path) -> None:
    assert check_key_file(str(sa_key)) == "service_account demo-sa@fake-project.iam.gserviceaccount.com"


def test_check_key_file_takes_other_credential_files(fake: Any, tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "user.json")
    assert check_key_file(str(user)) == "authorized_user user@example.com"
    imp = fake.write_impersonated_service_account(tmp_path / "imp.json", target=ADC_TARGET)
    assert check_key_file(str(imp)) == f"impersonated_service_account {ADC_TARGET}"


def test_load_key_file_is_scoped_and_fetches_nothing(sa_key: Path) -> None:
    request = StubRequest()  # any call would fail: no answers
    creds = load_key_file(str(sa_key), SCOPES, request)
    assert isinstance(creds, service_account.Credentials)
    assert creds.scopes == SCOPES and creds.token is None
    assert request.calls == []


def key_error(path: Path | str) -> str:
    with pytest.raises(ValueError) as info:
        check_key_file(str(path))
    assert isinstance(info.value, KeyFileError) and isinstance(info.value, TokenError)
    assert info.value.reason == "key_file_invalid"
    return str(info.value)


def test_key_file_errors_say_why(tmp_path: Path) -> None:
    assert key_error(tmp_path / "nope.json") == f"The key file {tmp_path / 'nope.json'} does not exist."
    assert key_error(tmp_path) == f"The key file {tmp_path} is a directory, not a file."
    (tmp_path / "x.txt").write_text("hello")
    assert key_error(tmp_path / "x.txt") == f"The key file {tmp_path / 'x.txt'} is not JSON."
    (tmp_path / "list.json").write_text("[1]")
    assert "not a Google credential file (not an object)" in key_error(tmp_path / "list.json")
    (tmp_path / "other.json").write_text(json.dumps({"type": "aws_key", "secret": "s3cr3t-value"}))
    message = key_error(tmp_path / "other.json")
    assert "type 'aws_key'" in message and "s3cr3t-value" not in message


def test_unreadable_key_file(sa_key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        sa_key.chmod(0)  # the real thing
    else:  # root reads any file: make open() answer as the kernel would to anyone else

        def denied(*args: Any, **kwargs: Any) -> Any:
            raise PermissionError(13, "Permission denied", str(sa_key))

        monkeypatch.setattr("addons.key_files.open", denied, raising=False)
    try:
        assert key_error(sa_key) == f"The key file {sa_key} cannot be read: permission denied."
    finally:
        sa_key.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_broken_key_never_echoes_the_key(sa_key: Path, tmp_path: Path) -> None:
    info = json.loads(sa_key.read_text())
    lines = info["private_key"].splitlines()
    info["private_key"] = "\n".join(lines[:3] + lines[5:])  # damaged, still PEM-shaped
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(info))
    message = key_error(broken)
    assert message.startswith(f"The key file {broken} is a service_account file google-auth cannot use")
    assert not any(line in message for line in lines[1:-1])
    del info["client_email"]
    broken.write_text(json.dumps(info))
    assert key_error(broken) == f"The service account key file {broken} lacks client_email."
