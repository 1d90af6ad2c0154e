"""load_credentials(), credential_type() and principal() for every ADC type, offline."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.auth import compute_engine, external_account
from google.auth import exceptions as gexc
from google.auth.compute_engine import _metadata

from addons.credentials import SUBJECT_MAX_BYTES, credential_type, load_credentials, principal
from addons.token_cache import describe_error

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
POOL = "projects/123456789012/locations/global/workloadIdentityPools/k8s-pool"
AUDIENCE = f"//iam.googleapis.com/{POOL}/providers/k8s"
WORKFORCE = "locations/global/workforcePools/staff"
WORKFORCE_AUDIENCE = f"//iam.googleapis.com/{WORKFORCE}/providers/okta"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
STS = "https://sts.googleapis.com/v1/token"
SUBJECT = "system:serviceaccount:prod:billing"
# Every secret below contains this; no principal or type may.
SECRET = "SECRET"


def iam_url(email: str) -> str:
    return f"https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/{email}:generateAccessToken"


def jwt(claims: dict[str, Any]) -> str:
    """A compact JWS with these claims; principal() reads, never verifies, so the signature is junk."""
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.{SECRET}-signature"


@dataclass
class FakeTransport:
    """The google-auth ``Request`` interface: answers like a metadata server that is or is not
    there, and records every URL, so a test can show what loading fetched."""

    on_gce: bool = False
    urls: list[str] = field(default_factory=list)

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: Any = None, **kwargs: Any) -> Any:
        self.urls.append(url)
        if self.on_gce:
            return _Answer(200, {"metadata-flavor": "Google"})
        return _Answer(404, {})  # something answered, and it is not a metadata server


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    data: bytes = b""


@pytest.fixture(scope="module")
def rsa_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture(scope="module")
def ec_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@pytest.fixture
def adc(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    """Point GOOGLE_APPLICATION_CREDENTIALS at a file holding ``info``; nothing else is found."""
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # an empty gcloud config
    monkeypatch.delenv("GOOGLE_CLOUD_QUOTA_PROJECT", raising=False)

    def write(info: dict[str, Any]) -> Path:
        path = tmp_path / "adc.json"
        path.write_text(json.dumps(info))
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
        return path

    return write


@pytest.fixture
def off_gce(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """google-auth read NO_GCE_CHECK at import and reads DMI for GCE residency: neither decides here."""
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", False)
    monkeypatch.setattr(_metadata, "_GCE_PRODUCT_NAME_FILE", str(tmp_path / "no-dmi"))


def user_info(account: str = "user@example.com") -> dict[str, Any]:
    return {"type": "authorized_user", "client_id": "1234-fake.apps.googleusercontent.com",
            "client_secret": f"{SECRET}-client", "refresh_token": f"{SECRET}-refresh", "account": account}


def external(credential_source: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "external_account", "audience": AUDIENCE, "subject_token_type": JWT_TYPE,
            "token_url": STS, "credential_source": credential_source, **extra}


def token_file(tmp_path: Path, content: str, name: str = "token") -> dict[str, Any]:
    path = tmp_path / name
    path.write_text(content)
    return {"file": str(path)}


# (id, info(tmp_path, rsa_pem, ec_pem), type, principal)
Case = tuple[str, Callable[[Path, str, str], dict[str, Any]], str, str]
CASES: list[Case] = [
    ("service_account",
     lambda t, key, _: {"type": "service_account", "project_id": "p", "private_key_id": "k1",
                        "private_key": key, "client_email": "sa@p.iam.gserviceaccount.com",
                        "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"},
     "service_account", "sa@p.iam.gserviceaccount.com"),
    ("authorized_user", lambda t, _k, _e: user_info(), "authorized_user", "user@example.com"),
    ("authorized_user_without_account", lambda t, _k, _e: user_info(account=""),
     "authorized_user", "client:1234-fake.apps.googleusercontent.com"),
    ("impersonated_service_account",
     lambda t, _k, _e: {"type": "impersonated_service_account", "delegates": [],
                        "service_account_impersonation_url": iam_url("target@p.iam.gserviceaccount.com"),
                        "source_credentials": user_info()},
     "impersonated_service_account", "target@p.iam.gserviceaccount.com"),
    ("external_account_file_text",
     lambda t, _k, _e: external(token_file(t, jwt({"sub": SUBJECT, "aud": "x"}))),
     "external_account", f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}"),
    ("external_account_file_json",
     lambda t, _k, _e: external({**token_file(t, json.dumps({"id_token": jwt({"sub": SUBJECT})})),
                                 "format": {"type": "json", "subject_token_field_name": "id_token"}}),
     "external_account", f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}"),
    ("external_account_file_impersonated",
     lambda t, _k, _e: external(token_file(t, jwt({"sub": SUBJECT})),
                                service_account_impersonation_url=iam_url("wif@p.iam.gserviceaccount.com")),
     "external_account", "wif@p.iam.gserviceaccount.com"),
    ("external_account_url",
     lambda t, _k, _e: external({"url": "http://169.254.169.254/token", "headers": {"Metadata": "True"},
                                 "format": {"type": "json", "subject_token_field_name": "access_token"}}),
     "external_account", f"principalSet://iam.googleapis.com/{POOL}/*"),
    ("external_account_url_impersonated",
     lambda t, _k, _e: external({"url": "http://169.254.169.254/token"},
                                service_account_impersonation_url=iam_url("wif@p.iam.gserviceaccount.com")),
     "external_account", "wif@p.iam.gserviceaccount.com"),
    ("external_account_opaque_token",
     lambda t, _k, _e: external(token_file(t, f"{SECRET}-opaque-token")),
     "external_account", f"principalSet://iam.googleapis.com/{POOL}/*"),
    ("external_account_executable",
     lambda t, _k, _e: external({"executable": {"command": "/usr/bin/false", "timeout_millis": 5000}}),
     "external_account", f"principalSet://iam.googleapis.com/{POOL}/*"),
    ("external_account_aws",
     lambda t, _k, _e: {**external({
         "environment_id": "aws1",
         "region_url": "http://169.254.169.254/latest/meta-data/placement/availability-zone",
         "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
         "regional_cred_verification_url":
             "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"}),
         "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request"},
     "external_account", f"principalSet://iam.googleapis.com/{POOL}/*"),
    ("external_account_workforce",
     lambda t, _k, _e: {**external(token_file(t, jwt({"sub": "alice@example.com"}))),
                        "audience": WORKFORCE_AUDIENCE, "workforce_pool_user_project": "p"},
     "external_account", f"principal://iam.googleapis.com/{WORKFORCE}/subject/alice@example.com"),
    ("external_account_authorized_user",
     lambda t, _k, _e: {"type": "external_account_authorized_user", "audience": WORKFORCE_AUDIENCE,
                        "refresh_token": f"{SECRET}-refresh", "client_id": "wf-client",
                        "client_secret": f"{SECRET}-client",
                        "token_url": "https://sts.googleapis.com/v1/oauthtoken"},
     "external_account_authorized_user", f"principalSet://iam.googleapis.com/{WORKFORCE}/*"),
    ("gdch_service_account",
     lambda t, _k, ec_key: {"type": "gdch_service_account", "format_version": "1", "project": "edge",
                            "private_key_id": "k", "private_key": ec_key, "name": "robot",
                            "token_uri": "https://service-identity.edge.example/authenticate"},
     "gdch_service_account", "system:serviceaccount:edge:robot"),
]


@pytest.mark.parametrize(("info", "kind", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_adc_file_type_loads_offline_and_is_named(
    adc: Callable[[dict[str, Any]], Path], tmp_path: Path, rsa_pem: str, ec_pem: str,
    info: Callable[[Path, str, str], dict[str, Any]], kind: str, expected: str,
) -> None:
    adc(info(tmp_path, rsa_pem, ec_pem))
    transport = FakeTransport()
    creds = load_credentials(SCOPES, transport)
    assert transport.urls == []  # no project lookup, no refresh, no probe: nothing fetched
    assert creds.token is None
    assert not getattr(creds, "requires_scopes", False)  # scoped here, not by default()
    assert credential_type(creds) == kind
    named = principal(creds)
    assert named == expected
    assert SECRET not in named and SECRET not in credential_type(creds)
    assert "PRIVATE KEY" not in named


def test_gce_metadata_server_is_probed_once_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, adc: Any, off_gce: None
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("GOOGLE_CLOUD_QUOTA_PROJECT", "billing-project")
    transport = FakeTransport(on_gce=True)
    creds = load_credentials(SCOPES, transport)
    assert isinstance(creds, compute_engine.Credentials)
    assert len(transport.urls) == 1  # the probe; default() would also ask for the project id
    assert "project" not in transport.urls[0]
    assert creds.scopes == SCOPES and creds.quota_project_id == "billing-project"
    assert credential_type(creds) == "gce_metadata"
    assert principal(creds) == "metadata:default"  # the email is looked up by the first token fetch


def test_gce_principal_is_the_service_account_email_once_known() -> None:
    creds = compute_engine.Credentials(service_account_email="vm@p.iam.gserviceaccount.com")
    assert principal(creds) == "vm@p.iam.gserviceaccount.com"


def test_gcloud_adc_file_is_found_without_running_gcloud(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, off_gce: None
) -> None:
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    (gcloud / "application_default_credentials.json").write_text(json.dumps(user_info()))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # default() would run `gcloud config`
    transport = FakeTransport(on_gce=True)
    creds = load_credentials(SCOPES, transport)
    assert credential_type(creds) == "authorized_user" and transport.urls == []


def test_no_credentials_anywhere_keeps_the_no_credentials_message(
    monkeypatch: pytest.MonkeyPatch, adc: Any, off_gce: None
) -> None:
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    transport = FakeTransport(on_gce=False)
    with pytest.raises(gexc.DefaultCredentialsError) as caught:
        load_credentials(SCOPES, transport)
    assert len(transport.urls) == 1  # only the probe
    error = describe_error(caught.value)
    assert error.reason == "no_credentials"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(error)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "credentials_file_missing"),
        ("{not json", "credentials_file_invalid"),
        (json.dumps({"type": "api_key"}), "credentials_file_invalid"),
        (json.dumps({"type": "external_account", "audience": AUDIENCE}), "credentials_file_invalid"),
        ("directory", "credentials_file_unreadable"),
    ],
    ids=["missing", "not-json", "unknown-type", "incomplete-external-account", "unreadable"],
)
def test_bad_credentials_file_keeps_its_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, adc: Any, content: str | None, reason: str
) -> None:
    path = tmp_path / "key.json"
    if content == "directory":
        path.mkdir()  # exists, cannot be read as a file (even by root)
    elif content is not None:
        path.write_text(content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises((gexc.DefaultCredentialsError, OSError)) as caught:
        load_credentials(SCOPES, FakeTransport())
    assert describe_error(caught.value).reason == reason


def test_subject_file_that_appears_later_is_named_then(
    adc: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    later = tmp_path / "projected-token"
    adc(external({"file": str(later)}))
    creds = load_credentials(SCOPES, FakeTransport())
    assert principal(creds) == f"principalSet://iam.googleapis.com/{POOL}/*"
    later.write_text(jwt({"sub": SUBJECT}))
    assert principal(creds) == f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}"


def test_subject_is_read_once_per_credentials(adc: Callable[[dict[str, Any]], Path], tmp_path: Path) -> None:
    # principal() runs for every request: a rotated token (same workload) is not re-read.
    source = token_file(tmp_path, jwt({"sub": SUBJECT}))
    adc(external(source))
    creds = load_credentials(SCOPES, FakeTransport())
    named = f"principal://iam.googleapis.com/{POOL}/subject/{SUBJECT}"
    assert principal(creds) == named
    Path(source["file"]).unlink()
    assert principal(creds) == named


@pytest.mark.parametrize(
    "token",
    [
        jwt({"sub": "line\nbreak"}),
        jwt({"sub": "two words"}),
        jwt({"sub": "\x1b[31mred"}),
        jwt({"sub": "x" * (SUBJECT_MAX_BYTES + 1)}),
        jwt({"sub": ""}),
        jwt({"sub": 42}),
        jwt({"aud": "no subject"}),
        "a.b.c.d.e",  # an encrypted JWT
        "only.two",
        "not-base64.@@@.sig",
        "x" * (64 * 1024 + 1),
    ],
    ids=["newline", "space", "escape", "too-long", "empty", "number", "missing", "jwe", "two-parts",
         "bad-base64", "huge-file"],
)
def test_hostile_subject_tokens_give_the_pool_not_their_subject(
    adc: Callable[[dict[str, Any]], Path], tmp_path: Path, token: str
) -> None:
    adc(external(token_file(tmp_path, token)))
    creds = load_credentials(SCOPES, FakeTransport())
    assert principal(creds) == f"principalSet://iam.googleapis.com/{POOL}/*"


def test_audience_naming_no_pool_is_reported_as_it_is(adc: Callable[[dict[str, Any]], Path]) -> None:
    adc(external({"url": "http://127.0.0.1:9/token"}, audience="//iam.googleapis.com/odd/audience"))
    assert principal(load_credentials(SCOPES, FakeTransport())) == "//iam.googleapis.com/odd/audience"


def test_external_account_is_an_external_account_whatever_its_source(
    adc: Callable[[dict[str, Any]], Path], tmp_path: Path
) -> None:
    adc(external(token_file(tmp_path, jwt({"sub": SUBJECT}))))
    creds = load_credentials(SCOPES, FakeTransport())
    assert isinstance(creds, external_account.Credentials)
    assert creds.scopes == SCOPES


class _NotACredential:
    pass


@dataclass
class _NamedThing:
    service_account_email: str = "thing@p.iam.gserviceaccount.com"


@pytest.mark.parametrize(
    ("creds", "kind", "expected"),
    [(None, "NoneType", None), (_NotACredential(), "_NotACredential", None),
     (_NamedThing(), "_NamedThing", "thing@p.iam.gserviceaccount.com")],
    ids=["none", "unknown", "duck-typed"],
)
def test_unknown_objects(creds: object, kind: str, expected: str | None) -> None:
    assert credential_type(creds) == kind
    assert principal(creds) == expected
