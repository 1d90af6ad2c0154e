"""Every ADC type through the real proxy: one token fetch per lifetime, no project lookup, a named principal.

Proxy processes, not in-process proxies: credentials come from each process's own environment,
and google-auth reads the metadata server's address once, at import.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from fakegoogle import FakeGoogle
from fakegoogle.federation import (
    DEFAULT_SUBJECT,
    FEDERATED_SA,
    IMPERSONATED_SA,
    WORKFORCE_POOL,
    WORKLOAD_POOL,
)
from fakegoogle.metadata import SA_EMAIL as METADATA_SA
from fakegoogle.tokens import bearer_token
from tests.proxyproc import ProxyProcess
from tests.test_proxy_e2e import session_via

N = 20
BUCKET_PATH = "/storage/v1/b/demo-bucket"
BUCKET_URL = "https://storage.googleapis.com" + BUCKET_PATH
ENDPOINTS = ("oauth2", "metadata", "sts_exchange", "sts_refresh", "generate_access_token")


@dataclass(frozen=True)
class Adc:
    """One way of having credentials: what the proxy is given, and what it should cost."""

    write: Callable[[FakeGoogle, Path], Path | None]  # the ADC file, or None for the metadata server
    kind: str  # credential_type() in the log line
    principal: str
    fetches: dict[str, int]  # token endpoint -> calls for one token
    issuer: str  # fake.token_kind() of the token the API sees
    env: Callable[[FakeGoogle], dict[str, str]] = field(default=lambda fake: {})


CASES = {
    "service_account": Adc(
        lambda fake, d: fake.write_service_account_key(d / "sa.json"),
        "service_account", "demo-sa@fake-project.iam.gserviceaccount.com", {"oauth2": 1}, "oauth2"),
    "authorized_user": Adc(
        lambda fake, d: fake.write_authorized_user(d / "user.json"),
        "authorized_user", "user@example.com", {"oauth2": 1}, "oauth2"),
    "impersonated_service_account": Adc(
        lambda fake, d: fake.write_impersonated_service_account(d / "imp.json"),
        "impersonated_service_account", IMPERSONATED_SA,
        {"oauth2": 1, "generate_access_token": 1}, "iamcredentials"),
    "external_account_file": Adc(
        lambda fake, d: fake.write_external_account(d / "wif.json"),
        "external_account",
        f"principal://iam.googleapis.com/{WORKLOAD_POOL}/subject/{DEFAULT_SUBJECT}",
        {"sts_exchange": 1}, "sts"),
    "external_account_file_json_impersonated": Adc(
        lambda fake, d: fake.write_external_account(d / "wif.json", token_format="json", impersonate=True),
        "external_account", FEDERATED_SA, {"sts_exchange": 1, "generate_access_token": 1},
        "iamcredentials"),
    "external_account_url": Adc(
        lambda fake, d: fake.write_external_account(d / "wif.json", source="url"),
        "external_account", f"principalSet://iam.googleapis.com/{WORKLOAD_POOL}/*",
        {"sts_exchange": 1}, "sts"),
    "external_account_url_impersonated": Adc(
        lambda fake, d: fake.write_external_account(d / "wif.json", source="url", impersonate=True),
        "external_account", FEDERATED_SA, {"sts_exchange": 1, "generate_access_token": 1},
        "iamcredentials"),
    "external_account_authorized_user": Adc(
        lambda fake, d: fake.write_external_account_authorized_user(d / "workforce.json"),
        "external_account_authorized_user", f"principalSet://iam.googleapis.com/{WORKFORCE_POOL}/*",
        {"sts_refresh": 1}, "sts_refresh"),
    "gce_metadata": Adc(
        lambda fake, d: None, "gce_metadata", METADATA_SA, {"metadata": 1}, "metadata",
        env=lambda fake: {**fake.env_for_metadata(), "NO_GCE_CHECK": "false"}),
}


def token_calls(fake: FakeGoogle) -> dict[str, int]:
    return {
        "oauth2": fake.oauth2_token_requests,
        "metadata": fake.token_requests_to("metadata"),
        "sts_exchange": fake.sts_exchanges,
        "sts_refresh": fake.sts_refreshes,
        "generate_access_token": fake.generate_access_token_calls,
    }


def get_bucket(pp: ProxyProcess) -> requests.Response:
    return session_via(pp).get(BUCKET_URL, timeout=30)


@pytest.mark.parametrize("adc", CASES.values(), ids=CASES.keys())
def test_one_token_fetch_for_concurrent_requests_and_no_project_lookup(
    proxy_process_factory: Callable[..., ProxyProcess], fake: FakeGoogle, tmp_path: Path, adc: Adc
) -> None:
    credentials = adc.write(fake, tmp_path)
    audit = tmp_path / "audit.jsonl"
    before, requests_before = token_calls(fake), fake.token_requests
    # Hold the first token call, so the requests meet a cache that has no token yet.
    fake.set_token_failure("hang")
    pp = proxy_process_factory("--audit-log", str(audit), credentials=credentials, env=adc.env(fake))
    with concurrent.futures.ThreadPoolExecutor(N) as pool:
        futures = [pool.submit(get_bucket, pp) for _ in range(N)]
        asked = fake.wait_for_token_requests(requests_before + 1)
        fake.set_token_failure(None)
        statuses = [f.result().status_code for f in futures]
    assert asked, "the proxy never asked for a token"
    assert statuses == [200] * N

    after = token_calls(fake)
    assert {e: after[e] - before[e] for e in ENDPOINTS} == {e: adc.fetches.get(e, 0) for e in ENDPOINTS}
    assert not [q.path for q in fake.requests if q.host == "cloudresourcemanager.googleapis.com"]
    assert not [path for path in fake.metadata_requests if "/project/" in path]
    seen = [q for q in fake.requests if q.path == BUCKET_PATH]
    assert len(seen) == N
    assert {fake.token_kind(bearer_token(q.authorization) or "") for q in seen} == {adc.issuer}

    line = pp.wait_for_line("token available")
    assert f"{adc.kind} credentials for {adc.principal}" in line, line
    assert pp.stop() == 0
    records = [json.loads(raw) for raw in audit.read_text().splitlines()]
    assert [r["principal"] for r in records if r["path"] == BUCKET_PATH] == [adc.principal] * N


def test_url_sourced_subject_token_is_fetched_once_per_exchange(
    proxy_process_factory: Callable[..., ProxyProcess], fake: FakeGoogle, tmp_path: Path
) -> None:
    pp = proxy_process_factory(credentials=fake.write_external_account(tmp_path / "wif.json", source="url"))
    pp.wait_for_line("token available")
    assert get_bucket(pp).status_code == 200
    assert [p for p in fake.metadata_requests if "/identity/" in p] == [
        "GET /metadata/identity/oauth2/token"
    ]


def test_subject_token_the_pool_does_not_trust_is_a_clear_502(
    proxy_process_factory: Callable[..., ProxyProcess], fake: FakeGoogle, tmp_path: Path
) -> None:
    config = fake.write_external_account(tmp_path / "wif.json")
    token_file = Path(json.loads(config.read_text())["credential_source"]["file"])
    header, claims, _signature = token_file.read_text().split(".")
    token_file.write_text(f"{header}.{claims}.c2lnbmF0dXJl")  # a forged signature
    before = fake.sts_exchanges
    pp = proxy_process_factory(credentials=config)
    r = get_bucket(pp)
    assert r.status_code == 502
    assert "invalid_grant" in r.json()["error"]["message"]
    assert fake.sts_exchanges - before >= 1
    assert not any(q.path == BUCKET_PATH for q in fake.requests)
    assert token_file.read_text() not in pp.text()
