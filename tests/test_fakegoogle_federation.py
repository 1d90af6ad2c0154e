"""The fake's workload identity federation: sts token exchange, iamcredentials impersonation,
workforce refresh, through google-auth's own clients and raw requests (no mocks)."""

from __future__ import annotations

import base64
import datetime
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import pytest
import requests
from google.auth import exceptions as gexc
from google.auth import external_account_authorized_user, identity_pool, impersonated_credentials

from fakegoogle import FakeGoogle
from fakegoogle.federation import (
    ALLOWED_AUDIENCE,
    AUDIENCE,
    FEDERATED_SA,
    IMPERSONATED_SA,
    JWT_TOKEN_TYPE,
    STS_TOKEN_URL,
    Federation,
    impersonation_url,
)
from fakegoogle.sts import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
BUCKET = "https://storage.googleapis.com/storage/v1/b/demo-bucket"


@pytest.fixture(autouse=True)
def _reset(fg: FakeGoogle) -> Iterator[None]:
    yield
    fg.set_token_failure(None)


@pytest.fixture
def session(fg: FakeGoogle) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(fg.google_ca_pem)
    return s


@pytest.fixture
def transport(session: requests.Session) -> google.auth.transport.requests.Request:
    return google.auth.transport.requests.Request(session)


def load(path: Path) -> Any:
    info = json.loads(path.read_text())
    if info["type"] == "external_account":
        return identity_pool.Credentials.from_info(info, scopes=SCOPES)
    if info["type"] == "impersonated_service_account":
        return impersonated_credentials.Credentials.from_impersonated_service_account_info(info, SCOPES)
    return external_account_authorized_user.Credentials.from_info(info)


def exchange_form(subject_token: str, **overrides: str) -> dict[str, str]:
    return {
        "grant_type": TOKEN_EXCHANGE, "requested_token_type": ACCESS_TOKEN_TYPE,
        "subject_token_type": JWT_TOKEN_TYPE, "audience": AUDIENCE, "scope": SCOPES[0],
        "subject_token": subject_token, **overrides,
    }


@pytest.mark.parametrize("token_format", ["text", "json"])
def test_file_sourced_exchange_gives_a_token_the_apis_accept(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session, transport: Any, token_format: str
) -> None:
    creds = load(fg.write_external_account(tmp_path / "wif.json", token_format=token_format))
    before = (fg.sts_exchanges, fg.generate_access_token_calls)
    creds.refresh(transport)
    assert (fg.sts_exchanges - before[0], fg.generate_access_token_calls - before[1]) == (1, 0)
    assert fg.token_kind(creds.token) == "sts"
    assert session.get(BUCKET, headers={"Authorization": f"Bearer {creds.token}"}).status_code == 200


def test_impersonation_exchanges_then_generates_an_ordinary_token(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session, transport: Any
) -> None:
    creds = load(fg.write_external_account(tmp_path / "wif.json", impersonate=True))
    assert creds.service_account_email == FEDERATED_SA
    before = (fg.sts_exchanges, fg.generate_access_token_calls)
    creds.refresh(transport)
    assert (fg.sts_exchanges - before[0], fg.generate_access_token_calls - before[1]) == (1, 1)
    assert fg.token_kind(creds.token) == "iamcredentials"
    remaining = creds.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(minutes=55) < remaining <= datetime.timedelta(hours=1)
    assert session.get(BUCKET, headers={"Authorization": f"Bearer {creds.token}"}).status_code == 200


def test_url_sourced_subject_token_comes_from_the_azure_style_endpoint(
    fg: FakeGoogle, tmp_path: Path, transport: Any
) -> None:
    creds = load(fg.write_external_account(tmp_path / "wif.json", source="url"))
    fg.clear_requests()
    creds.refresh(transport)
    assert fg.token_kind(creds.token) == "sts"
    assert fg.metadata_requests == ["GET /metadata/identity/oauth2/token"]


def test_azure_style_endpoint_wants_its_header(fg: FakeGoogle) -> None:
    host, port = fg.metadata_addr
    url = f"http://{host}:{port}/metadata/identity/oauth2/token?resource={ALLOWED_AUDIENCE}"
    s = requests.Session()
    s.trust_env = False
    assert s.get(url).status_code == 400
    assert "access_token" in s.get(url, headers={"Metadata": "true"}).json()


def test_impersonated_service_account_file_uses_its_user_source(
    fg: FakeGoogle, tmp_path: Path, transport: Any
) -> None:
    creds = load(fg.write_impersonated_service_account(tmp_path / "imp.json"))
    before = (fg.oauth2_token_requests, fg.generate_access_token_calls)
    creds.refresh(transport)
    assert (fg.oauth2_token_requests - before[0], fg.generate_access_token_calls - before[1]) == (1, 1)
    assert creds.service_account_email == IMPERSONATED_SA
    assert fg.token_kind(creds.token) == "iamcredentials"


def test_workforce_user_refreshes_at_sts(fg: FakeGoogle, tmp_path: Path, transport: Any) -> None:
    path = fg.write_external_account_authorized_user(tmp_path / "workforce.json")
    creds = load(path)
    before = fg.sts_refreshes
    creds.refresh(transport)
    assert fg.sts_refreshes - before == 1 and fg.token_kind(creds.token) == "sts_refresh"
    wrong = json.loads(path.read_text()) | {"client_secret": "not-the-secret"}
    with pytest.raises(gexc.OAuthError, match="invalid_grant"):
        external_account_authorized_user.Credentials.from_info(wrong).refresh(transport)


def _forged(token: str) -> str:
    header, claims, _ = token.split(".")
    return f"{header}.{claims}.{base64.urlsafe_b64encode(b'forged').rstrip(b'=').decode()}"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        (lambda fg: exchange_form(fg.mint_subject_token("s")), None),
        (lambda fg: exchange_form(fg.mint_subject_token("s"), audience=AUDIENCE + "x"), "invalid_target"),
        (lambda fg: exchange_form(fg.mint_subject_token("s", "https://elsewhere")), "invalid_grant"),
        (lambda fg: exchange_form(fg.mint_subject_token("s", now=time.time() - 7200)), "invalid_grant"),
        (lambda fg: exchange_form(_forged(fg.mint_subject_token("s"))), "invalid_grant"),
        (lambda fg: exchange_form(Federation().mint_subject_token("s")), "invalid_grant"),
        (lambda fg: exchange_form(fg.mint_subject_token("")), "invalid_grant"),
        (lambda fg: exchange_form("not-a-jwt"), "invalid_grant"),
        (lambda fg: exchange_form(fg.mint_subject_token("s"), scope=""), "invalid_scope"),
        (lambda fg: exchange_form(fg.mint_subject_token("s"), grant_type="refresh_token"),
         "unsupported_grant_type"),
        (lambda fg: exchange_form(fg.mint_subject_token("s"),
                                   subject_token_type="urn:ietf:params:oauth:token-type:saml2"),
         "invalid_request"),
    ],
    ids=["valid", "unknown-audience", "token-for-another-audience", "expired", "forged-signature",
         "another-issuer", "no-subject", "not-a-jwt", "no-scope", "wrong-grant", "saml"],
)
def test_sts_checks_the_exchange(fg: FakeGoogle, session: requests.Session, form: Any, error: str | None) -> None:
    r = session.post(STS_TOKEN_URL, data=form(fg))
    if error is None:
        assert r.status_code == 200, r.text
        assert r.json()["issued_token_type"] == ACCESS_TOKEN_TYPE
        assert fg.token_kind(r.json()["access_token"]) == "sts"
    else:
        assert (r.status_code, r.json()["error"]) == (400, error)


def test_sts_honours_the_failure_switch(fg: FakeGoogle, tmp_path: Path, transport: Any) -> None:
    creds = load(fg.write_external_account(tmp_path / "wif.json"))
    fg.set_token_failure("500")
    with pytest.raises(gexc.OAuthError, match="internal_failure"):
        creds.refresh(transport)


def _generate(session: requests.Session, email: str, token: str | None, body: dict[str, Any]) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return session.post(impersonation_url(email), json=body, headers=headers)


@pytest.mark.parametrize(
    ("email", "token", "body", "status"),
    [
        (FEDERATED_SA, "valid", {"scope": SCOPES, "lifetime": "600s"}, 200),
        (FEDERATED_SA, None, {"scope": SCOPES}, 401),
        (FEDERATED_SA, "ya29.fake-never-issued", {"scope": SCOPES}, 401),
        (f"stranger@{FEDERATED_SA.split('@')[1]}", "valid", {"scope": SCOPES}, 404),
        (FEDERATED_SA, "valid", {}, 400),
        (FEDERATED_SA, "valid", {"scope": SCOPES, "lifetime": "an hour"}, 400),
    ],
    ids=["valid", "no-token", "unknown-token", "unknown-account", "no-scope", "bad-lifetime"],
)
def test_generate_access_token_checks_the_caller(
    fg: FakeGoogle, tmp_path: Path, session: requests.Session, email: str, token: str | None, body: dict[str, Any], status: int,
) -> None:
    fg.write_external_account(tmp_path / "wif.json", impersonate=True)  # makes FEDERATED_SA impersonable
    federated = session.post(STS_TOKEN_URL, data=exchange_form(
        fg.mint_subject_token("s"))).json()["access_token"]
    r = _generate(session, email, federated if token == "valid" else token, body)
    assert r.status_code == status, r.text
    if status == 200:
        assert fg.token_kind(r.json()["accessToken"]) == "iamcredentials"
        expires = datetime.datetime.strptime(r.json()["expireTime"], "%Y-%m-%dT%H:%M:%SZ")
        left = expires - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        assert left <= datetime.timedelta(seconds=600)  # the caller's shorter lifetime is honoured


def test_a_revoked_federated_token_cannot_impersonate(fg: FakeGoogle, tmp_path: Path, session: requests.Session) -> None:
    fg.write_external_account(tmp_path / "wif.json", impersonate=True)
    federated = session.post(STS_TOKEN_URL, data=exchange_form(
        fg.mint_subject_token("s"))).json()["access_token"]
    fg.revoke(federated)
    assert _generate(session, FEDERATED_SA, federated, {"scope": SCOPES}).status_code == 401


def test_waiting_for_token_requests_is_a_condition(fg: FakeGoogle, tmp_path: Path, transport: Any) -> None:
    assert not fg.wait_for_token_requests(fg.token_requests + 1, timeout=0.01)
    creds = load(fg.write_external_account(tmp_path / "wif.json"))
    target = fg.token_requests + 1
    creds.refresh(transport)
    assert fg.wait_for_token_requests(target, timeout=0)
