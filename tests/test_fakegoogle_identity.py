"""The fake's impersonation chains, ID tokens and Cloud Run origin, through google-auth's own
clients and raw requests (no proxy, no mocks)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth import compute_engine
from google.oauth2 import credentials as user_credentials
from google.oauth2 import id_token as google_id_token
from google.oauth2 import service_account

from fakegoogle import FakeGoogle
from fakegoogle.federation import STS_TOKEN_URL, federated_principal
from fakegoogle.metadata import SA_EMAIL as METADATA_SA
from fakegoogle.sts import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
IAM = "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts"
BUCKET = "https://storage.googleapis.com/storage/v1/b/demo-bucket"
PROJECT = "fake-project.iam.gserviceaccount.com"
D1, D2, TARGET = f"d1@{PROJECT}", f"d2@{PROJECT}", f"target@{PROJECT}"
USER = "user@example.com"  # the fake's gcloud user
RUN_HOST = "hello-abc123-uc.a.run.app"
RUN_URL = f"https://{RUN_HOST}"
IAP_CLIENT = "123456789012-abcdefghijklmnop.apps.googleusercontent.com"


@pytest.fixture(autouse=True)
def _reset(fg: FakeGoogle) -> Iterator[None]:
    fg.reset_iam()
    fg.token_lifetime = 3600
    yield
    fg.set_token_failure(None)


@pytest.fixture
def session(fg: FakeGoogle) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides s.verify
    s.verify = str(fg.run_ca_pem)  # the googleapis CA signs the Cloud Run certificate too
    return s


@pytest.fixture
def transport(session: requests.Session) -> google.auth.transport.requests.Request:
    return google.auth.transport.requests.Request(session)


@pytest.fixture
def user_token(fg: FakeGoogle, tmp_path: Path, transport: Any) -> str:
    """An access token of the fake's gcloud user, fetched as google-auth refreshes it."""
    creds = user_credentials.Credentials.from_authorized_user_file(str(fg.write_authorized_user(tmp_path / "u.json")))
    creds.refresh(transport)
    return str(creds.token)


def delegate(email: str) -> str:
    return f"projects/-/serviceAccounts/{email}"


def call(session: requests.Session, method: str, target: str, token: str | None, body: dict[str, Any]) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return session.post(f"{IAM}/{target}:{method}", json=body, headers=headers)


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def denied(permission: str) -> dict[str, Any]:
    return {"error": {
        "code": 403,
        "message": f"Permission '{permission}' denied on resource (or it may not exist).",
        "status": "PERMISSION_DENIED",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
            "domain": "iam.googleapis.com", "metadata": {"permission": permission},
        }],
    }}


# --- impersonation chains -------------------------------------------------------------------

def test_a_granted_chain_gives_a_token_for_the_target(fg: FakeGoogle, session: requests.Session, user_token: str) -> None:
    assert fg.principal_of(user_token) == USER
    fg.grant_token_creator(USER, D1)
    fg.grant_token_creator(D1, D2)
    fg.grant_token_creator(D2, TARGET)
    before = fg.token_requests_to("generate_access_token")
    r = call(session, "generateAccessToken", TARGET, user_token,
             {"scope": SCOPES, "delegates": [delegate(D1), delegate(D2)], "lifetime": "3600s"})
    assert r.status_code == 200, r.text
    minted = r.json()["accessToken"]
    assert set(r.json()) == {"accessToken", "expireTime"}
    assert fg.principal_of(minted) == TARGET and fg.token_kind(minted) == "iamcredentials"
    assert fg.token_requests_to("generate_access_token") == before + 1
    assert session.get(BUCKET, headers={"Authorization": f"Bearer {minted}"}).status_code == 200
    # The minted token speaks for TARGET: it may go on where TARGET holds the role, and only there.
    fg.grant_token_creator(TARGET, D1)
    assert call(session, "generateAccessToken", D1, minted, {"scope": SCOPES}).status_code == 200
    assert call(session, "generateAccessToken", D2, minted, {"scope": SCOPES}).status_code == 403


@pytest.mark.parametrize(
    ("grants", "delegates"),
    [
        ([], []),  # the caller holds nothing on the target
        ([(D1, TARGET)], [D1]),  # first hop missing
        ([(USER, D1), (D2, TARGET)], [D1, D2]),  # middle hop missing
        ([(USER, D1), (D1, D2)], [D1, D2]),  # last hop missing
        ([(D1, TARGET), (USER, TARGET)], [D1]),  # a grant on the target does not skip the chain
    ],
    ids=["direct", "first-hop", "middle-hop", "last-hop", "no-shortcut"],
)
def test_a_missing_grant_is_permission_denied_like_google(
    fg: FakeGoogle, session: requests.Session, user_token: str, grants: list[tuple[str, str]], delegates: list[str],
) -> None:
    for member, target in grants:
        fg.grant_token_creator(member, target)
    fg.add_service_account(TARGET)
    for method, permission in (("generateAccessToken", "iam.serviceAccounts.getAccessToken"),
                               ("generateIdToken", "iam.serviceAccounts.getOpenIdToken")):
        body = {"scope": SCOPES, "audience": RUN_URL, "delegates": [delegate(d) for d in delegates]}
        r = call(session, method, TARGET, user_token, body)
        assert r.status_code == 403 and r.json() == denied(permission), r.text


def test_a_revoked_grant_stops_the_chain(fg: FakeGoogle, session: requests.Session, user_token: str) -> None:
    fg.grant_token_creator(USER, TARGET)
    assert call(session, "generateAccessToken", TARGET, user_token, {"scope": SCOPES}).status_code == 200
    fg.revoke_token_creator(USER, TARGET)
    assert call(session, "generateAccessToken", TARGET, user_token, {"scope": SCOPES}).status_code == 403


@pytest.mark.parametrize(
    ("delegates", "status"),
    [
        ([delegate(f"ghost@{PROJECT}")], 404),
        ([delegate(D1), delegate(D1)], 400),
        ([delegate(D1), delegate(TARGET), delegate(D2)], 400),
        (["projects/other/keys/D1"], 400),
        ("not-a-list", 400),
    ],
    ids=["unknown-delegate", "repeated-delegate", "target-mid-chain", "malformed", "not-a-list"],
)
def test_bad_chains_are_refused_before_any_permission_check(
    fg: FakeGoogle, session: requests.Session, user_token: str, delegates: Any, status: int,
) -> None:
    for member, target in ((USER, D1), (D1, D2), (D2, TARGET), (D1, TARGET), (TARGET, D2), (D2, D1)):
        fg.grant_token_creator(member, target)
    r = call(session, "generateAccessToken", TARGET, user_token, {"scope": SCOPES, "delegates": delegates})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == status


def test_unknown_target_is_not_found_and_bad_callers_are_unauthenticated(
    fg: FakeGoogle, session: requests.Session, user_token: str,
) -> None:
    r = call(session, "generateIdToken", f"ghost@{PROJECT}", user_token, {"audience": RUN_URL})
    assert r.status_code == 404 and r.json()["error"]["status"] == "NOT_FOUND"
    fg.grant_token_creator(USER, TARGET)
    for token in (None, "ya29.fake-never-issued"):
        r = call(session, "generateIdToken", TARGET, token, {"audience": RUN_URL})
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    fg.revoke(user_token)
    assert call(session, "generateIdToken", TARGET, user_token, {"audience": RUN_URL}).status_code == 401


def test_self_delegation_needs_the_target_to_hold_the_role_on_itself(
    fg: FakeGoogle, session: requests.Session, user_token: str,
) -> None:
    fg.grant_token_creator(USER, TARGET)
    body = {"scope": SCOPES, "delegates": [delegate(TARGET)]}
    assert call(session, "generateAccessToken", TARGET, user_token, body).status_code == 403
    fg.grant_token_creator(TARGET, TARGET)
    assert call(session, "generateAccessToken", TARGET, user_token, body).status_code == 200


def test_every_token_records_whom_it_speaks_for(fg: FakeGoogle, tmp_path: Path, session: requests.Session, transport: Any) -> None:
    sa = service_account.Credentials.from_service_account_file(
        str(fg.write_service_account_key(tmp_path / "sa.json")), scopes=SCOPES)
    sa.refresh(transport)
    assert fg.principal_of(str(sa.token)) == sa.service_account_email
    metadata = session.get(
        f"http://{fg.env_for_metadata()['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"}).json()["access_token"]
    assert fg.principal_of(metadata) == METADATA_SA
    form = {"grant_type": TOKEN_EXCHANGE, "requested_token_type": ACCESS_TOKEN_TYPE,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt", "scope": SCOPES[0],
            "audience": json.loads(fg.write_external_account(tmp_path / "wif.json").read_text())["audience"],
            "subject_token": fg.mint_subject_token("system:serviceaccount:ns:app")}
    federated = session.post(STS_TOKEN_URL, data=form).json()["access_token"]
    assert fg.principal_of(federated) == federated_principal("system:serviceaccount:ns:app")
    # Grants name federated principals too; a service account key's account is one that exists.
    fg.grant_token_creator(federated_principal("system:serviceaccount:ns:app"), sa.service_account_email)
    r = call(session, "generateAccessToken", sa.service_account_email, federated, {"scope": SCOPES})
    assert r.status_code == 200 and fg.principal_of(r.json()["accessToken"]) == sa.service_account_email
    assert fg.principal_of("ya29.fake-never-issued") is None


def test_reset_iam_drops_grants_and_run_settings(fg: FakeGoogle, session: requests.Session, user_token: str) -> None:
    """The per-test ``fake`` fixture calls reset_iam()."""
    fg.grant_token_creator(USER, TARGET)
    fg.set_run_invokers(RUN_HOST, {"nobody@example.com"})
    fg.reset_iam()
    assert call(session, "generateAccessToken", TARGET, user_token, {"scope": SCOPES}).status_code == 404
    token = fg.mint_id_token(RUN_URL)
    assert session.get(RUN_URL, headers={"Authorization": f"Bearer {token}"}).status_code == 200


# --- ID tokens ------------------------------------------------------------------------------

@pytest.mark.parametrize("include_email", [True, False])
def test_generate_id_token(fg: FakeGoogle, session: requests.Session, user_token: str, include_email: bool) -> None:
    fg.grant_token_creator(USER, D1)
    fg.grant_token_creator(D1, TARGET)
    before = fg.token_requests_to("generate_id_token")
    r = call(session, "generateIdToken", TARGET, user_token,
             {"audience": RUN_URL, "delegates": [delegate(D1)], "includeEmail": include_email})
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["token"]
    assert fg.token_requests_to("generate_id_token") == before + 1
    claims = fg.verify_id_token(r.json()["token"], RUN_URL)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["sub"] == claims["azp"] == fg.unique_id(TARGET)
    assert claims["exp"] - claims["iat"] == 3600
    if include_email:
        assert claims["email"] == TARGET and claims["email_verified"] is True
    else:
        assert "email" not in claims and "email_verified" not in claims
    assert call(session, "generateIdToken", TARGET, user_token, {"delegates": [delegate(D1)]}).status_code == 400


def test_service_account_id_token_credentials(fg: FakeGoogle, tmp_path: Path, session: requests.Session, transport: Any) -> None:
    key = fg.write_service_account_key(tmp_path / "sa.json")
    creds = service_account.IDTokenCredentials.from_service_account_file(str(key), target_audience=RUN_URL)
    id_before, access_before = fg.token_requests_to("oauth2_id_token"), fg.token_requests_to("oauth2")
    creds.refresh(transport)
    assert fg.token_requests_to("oauth2_id_token") == id_before + 1
    assert fg.token_requests_to("oauth2") == access_before  # ID-token grants are counted apart
    email = creds.service_account_email
    claims = fg.verify_id_token(str(creds.token), RUN_URL)
    assert claims["email"] == email and claims["aud"] == RUN_URL and claims["sub"] == fg.unique_id(email)
    assert creds.expiry is not None and abs(creds.expiry.timestamp() - claims["exp"]) < 1
    # Verifiable with Google's own published certificates, as a receiving service would.
    verified = google_id_token.verify_oauth2_token(str(creds.token), transport, RUN_URL)
    assert verified["email"] == email
    with pytest.raises(ValueError, match="audience"):
        google_id_token.verify_oauth2_token(str(creds.token), transport, "https://other.a.run.app")


def test_jwks_verifies_the_signature(fg: FakeGoogle, session: requests.Session) -> None:
    token = fg.mint_id_token(RUN_URL)
    jwks = session.get("https://www.googleapis.com/oauth2/v3/certs").json()
    (key,) = [k for k in jwks["keys"] if k["kid"] == fg.id_token_key_id]
    assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")

    def number(b64: str) -> int:
        return int.from_bytes(base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)), "big")

    public = rsa.RSAPublicNumbers(number(key["e"]), number(key["n"])).public_key()
    head, body, sig = token.split(".")
    assert json.loads(base64.urlsafe_b64decode(head + "=="))["kid"] == fg.id_token_key_id
    public.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), f"{head}.{body}".encode(),
                  padding.PKCS1v15(), hashes.SHA256())
    assert list(session.get("https://www.googleapis.com/oauth2/v1/certs").json()) == [fg.id_token_key_id]


def test_id_tokens_respect_a_shorter_store_lifetime(fg: FakeGoogle) -> None:
    fg.token_lifetime = 120
    token = fg.mint_id_token(RUN_URL, lifetime=fg.token_lifetime)
    claims = fg.verify_id_token(token, RUN_URL)
    assert claims["exp"] - claims["iat"] == 120
    with pytest.raises(ValueError, match="expired"):
        fg.verify_id_token(fg.mint_id_token(RUN_URL, now=time.time() - 7200), RUN_URL)
    with pytest.raises(ValueError, match="audience"):
        fg.verify_id_token(token, "https://elsewhere.a.run.app")


def test_compute_engine_id_token_credentials(
    fg: FakeGoogle, monkeypatch: pytest.MonkeyPatch, transport: Any,
) -> None:
    for key, value in fg.env_for_metadata().items():
        monkeypatch.setenv(key, value)
    before = fg.token_requests_to("metadata_identity")
    creds = compute_engine.IDTokenCredentials(transport, RUN_URL, use_metadata_identity_endpoint=True)
    creds.refresh(transport)
    assert fg.token_requests_to("metadata_identity") == before + 1
    claims = fg.verify_id_token(str(creds.token), RUN_URL)
    assert claims["email"] == METADATA_SA and claims["sub"] == fg.unique_id(METADATA_SA)
    engine = claims["google"]["compute_engine"]
    assert engine["project_id"] == "fake-project" and engine["instance_name"] and engine["zone"]


def test_metadata_identity_endpoint(fg: FakeGoogle, session: requests.Session) -> None:
    url = f"http://{fg.env_for_metadata()['GCE_METADATA_HOST']}/computeMetadata/v1/instance/service-accounts/default/identity"
    assert session.get(url, params={"audience": RUN_URL}).status_code == 403  # no Metadata-Flavor
    flavor = {"Metadata-Flavor": "Google"}
    assert session.get(url, headers=flavor).status_code == 400  # no audience
    r = session.get(url, params={"audience": RUN_URL}, headers=flavor)
    assert r.status_code == 200 and r.headers["Metadata-Flavor"] == "Google"
    assert r.headers["content-type"].startswith("text/plain")
    standard = fg.verify_id_token(r.text, RUN_URL)
    assert "google" not in standard and standard["email"] == METADATA_SA
    full = claims_of(session.get(url, params={"audience": RUN_URL, "format": "full", "licenses": "TRUE"},
                                 headers=flavor).text)
    assert full["google"]["compute_engine"]["license_id"] == []


def test_id_token_grants_honour_the_failure_switch(fg: FakeGoogle, tmp_path: Path, transport: Any) -> None:
    creds = service_account.IDTokenCredentials.from_service_account_file(
        str(fg.write_service_account_key(tmp_path / "sa.json")), target_audience=RUN_URL)
    fg.set_token_failure("invalid_grant")
    with pytest.raises(google.auth.exceptions.RefreshError):
        creds.refresh(transport)
    fg.set_token_failure(None)
    creds.refresh(transport)
    assert fg.verify_id_token(str(creds.token), RUN_URL)["aud"] == RUN_URL


# --- the Cloud Run origin -------------------------------------------------------------------

def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_run_accepts_an_id_token_for_its_url(fg: FakeGoogle, session: requests.Session) -> None:
    fg.clear_requests()
    r = session.post(f"{RUN_URL}/hello?x=1", headers=bearer(fg.mint_id_token(RUN_URL)), data=b"hi")
    assert r.status_code == 200, r.text
    assert r.json() == {"host": RUN_HOST, "path": "/hello?x=1", "method": "POST", "email": METADATA_SA,
                        "sub": fg.unique_id(METADATA_SA), "aud": RUN_URL, "app_authorization": None}
    (seen,) = fg.run_requests()
    assert seen.server == "run" and seen.token_valid and seen.host == RUN_HOST


def test_run_without_a_token_is_forbidden(fg: FakeGoogle, session: requests.Session) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = session.get(f"{RUN_URL}/private", headers=headers)
        assert r.status_code == 403
        assert "Your client does not have permission to get URL <code>/private</code> from this server." in r.text


@pytest.mark.parametrize(
    "make",
    [
        lambda fg: fg.mint_id_token("https://other-xyz-uc.a.run.app"),
        lambda fg: fg.mint_id_token(RUN_URL, now=time.time() - 3601),
        lambda fg: fg.mint_id_token(RUN_URL)[:-8] + "AAAAAAAA",
        lambda fg: fg.mint_subject_token(audience=RUN_URL),  # signed, but not by Google
    ],
    ids=["wrong-audience", "expired", "bad-signature", "foreign-issuer"],
)
def test_run_rejects_bad_tokens_with_401(fg: FakeGoogle, session: requests.Session, make: Any) -> None:
    r = session.get(RUN_URL, headers=bearer(make(fg)))
    assert r.status_code == 401
    assert "invalid_token" in r.headers["WWW-Authenticate"]
    assert fg.requests[-1].server == "run" and not fg.requests[-1].token_valid


def test_serverless_authorization_leaves_authorization_to_the_app(fg: FakeGoogle, session: requests.Session) -> None:
    token = fg.mint_id_token(RUN_URL)
    r = session.get(RUN_URL, headers={"X-Serverless-Authorization": f"Bearer {token}",
                                      "Authorization": "Basic YXBwOnNlY3JldA=="})
    assert r.status_code == 200 and r.json()["app_authorization"] == "Basic YXBwOnNlY3JldA=="
    # When present, X-Serverless-Authorization is the one checked, even beside a good Authorization.
    r = session.get(RUN_URL, headers={"X-Serverless-Authorization": "Bearer nope", **bearer(token)})
    assert r.status_code == 401


def test_run_invokers(fg: FakeGoogle, session: requests.Session, user_token: str) -> None:
    fg.set_run_invokers(RUN_HOST, {TARGET})
    assert session.get(RUN_URL, headers=bearer(fg.mint_id_token(RUN_URL))).status_code == 403
    # An ID token without the email claim is still matched to its account (by sub), as IAM does.
    fg.grant_token_creator(USER, TARGET)
    token = call(session, "generateIdToken", TARGET, user_token, {"audience": RUN_URL}).json()["token"]
    r = session.get(RUN_URL, headers=bearer(token))
    assert r.status_code == 200 and r.json()["email"] is None
    fg.set_run_invokers(RUN_HOST, None)
    assert session.get(RUN_URL, headers=bearer(fg.mint_id_token(RUN_URL))).status_code == 200


def test_custom_and_iap_audiences(fg: FakeGoogle, session: requests.Session) -> None:
    custom_host, iap_host = "custom-abc-uc.a.run.app", "iap-abc-uc.a.run.app"
    fg.add_run_audience(custom_host, "my-custom-audience")
    for audience in (f"https://{custom_host}", "my-custom-audience"):
        assert session.get(f"https://{custom_host}", headers=bearer(fg.mint_id_token(audience))).status_code == 200
    fg.add_run_audience(iap_host, IAP_CLIENT)
    assert session.get(f"https://{iap_host}", headers=bearer(fg.mint_id_token(IAP_CLIENT))).status_code == 200
    # Behind IAP the service URL is not an accepted audience: only the OAuth client id is.
    assert session.get(f"https://{iap_host}", headers=bearer(fg.mint_id_token(f"https://{iap_host}"))).status_code == 401


def test_an_access_token_at_cloud_run_is_a_leak(fg: FakeGoogle, session: requests.Session, user_token: str) -> None:
    assert not [leak for leak in fg.leaks if leak.startswith("run:")]
    r = session.get(RUN_URL, headers=bearer(user_token))
    assert r.status_code == 401
    assert "run:authorization" in fg.leaks


def test_an_id_token_at_a_non_google_origin_is_a_leak(fg: FakeGoogle) -> None:
    other = requests.Session()
    other.trust_env, other.verify = False, str(fg.other_ca_pem)
    before = len(fg.leaks)
    other.get("https://www.example.test/", headers={"X-Forwarded-Token": fg.mint_id_token(RUN_URL)})
    assert fg.leaks[before:] == ["x-forwarded-token"]
