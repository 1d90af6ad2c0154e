"""Who speaks as whom, through the real proxy against the fake Google: impersonation with a
delegate, ID tokens for Cloud Run, two proxy users as two principals, key-file routes, and the
audit fields that say which route, credential, rule and user decided each call."""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import json
import subprocess
import time
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from fakegoogle.tokens import bearer_token
from tests.audit_records import read_records
from tests.conftest import ProxyFactory
from tests.proxyproc import base_env
from tests.test_proxy_e2e import session_via

SA = "demo-sa@fake-project.iam.gserviceaccount.com"  # the fake's service-account key
DELEGATE = "hop@fake-project.iam.gserviceaccount.com"
TARGET = "deployer@fake-project.iam.gserviceaccount.com"
OBJECT_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt"
RUN_URL = "https://hello-abc123.a.run.app/greet"


def run_resolve(fake: FakeGoogle) -> list[str]:
    return ["--resolve", "*.a.run.app={}:{}".format(*fake.run_addr)]


def api_tokens(fake: FakeGoogle, path_prefix: str = "/storage/v1/b/demo-bucket") -> list[str]:
    return [bearer_token(r.authorization) or "" for r in fake.requests
            if r.server == "googleapis" and r.path.startswith(path_prefix)]


# -- impersonation ----------------------------------------------------------------------------------

def test_impersonation_with_a_delegate_fetches_each_token_once(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                               tmp_path: Path) -> None:
    fake.grant_token_creator(SA, DELEGATE)
    fake.grant_token_creator(DELEGATE, TARGET)
    audit = tmp_path / "audit.jsonl"
    before = {e: fake.token_requests_to(e) for e in ("oauth2", "generate_access_token")}
    proxy = proxy_factory("--impersonate-service-account", f"{DELEGATE},{TARGET}", "--audit-log", str(audit))
    session = session_via(proxy)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: session.get(OBJECT_URL, timeout=20), range(20)))
    assert [a.status_code for a in answers] == [200] * 20, answers[0].text
    tokens = set(api_tokens(fake))
    assert len(tokens) == 1 and fake.principal_of(tokens.pop()) == TARGET
    assert fake.token_requests_to("oauth2") - before["oauth2"] == 1  # the ADC token that called IAM
    assert fake.token_requests_to("generate_access_token") - before["generate_access_token"] == 1
    records = read_records(audit)
    assert {(r["principal"], r["credential"], r["route"]) for r in records} == {
        (TARGET, "impersonated", "--inject-host *.googleapis.com")}


def test_denied_impersonation_names_the_account_and_the_permission(proxy_factory: ProxyFactory,
                                                                   fake: FakeGoogle) -> None:
    fake.add_service_account(TARGET)  # exists, but nobody granted the proxy's account anything
    proxy = proxy_factory("--impersonate-service-account", TARGET)
    answer = session_via(proxy).get(OBJECT_URL, timeout=20)
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert TARGET in error["message"] and "iam.serviceAccounts.getAccessToken" in error["message"]
    assert SA in error["message"]  # who lacks the role
    assert error["errors"][0]["reason"] == "impersonation_denied"
    assert api_tokens(fake) == []  # nothing went to the API, not even anonymously


# -- ID tokens for Cloud Run ------------------------------------------------------------------------

def test_curl_reaches_cloud_run_with_an_id_token(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                 tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app", "--audit-log", str(audit))
    out = subprocess.run(
        ["curl", "-sS", "--fail-with-body", "-x", proxy.url, "--cacert", str(proxy.ca_cert), RUN_URL],
        env=base_env(), capture_output=True, timeout=30, check=False, text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    seen = json.loads(out.stdout)
    assert seen["email"] == SA and seen["aud"] == "https://hello-abc123.a.run.app"
    assert seen["app_authorization"] is None
    (record,) = [r for r in read_records(audit) if r["host"] == "hello-abc123.a.run.app"]
    assert record["credential"] == "id_token" and record["auth"] == "injected" and record["principal"] == SA
    assert not fake.leaks  # no access token reached Cloud Run


def test_id_tokens_are_cached_per_audience(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    before = fake.token_requests_to("oauth2_id_token")
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app")
    session = session_via(proxy)
    urls = ["https://one-abc.a.run.app/", "https://two-abc.a.run.app/"] * 10
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda u: session.get(u, timeout=20), urls))
    assert [a.status_code for a in answers] == [200] * 20, answers[0].text
    assert {a.json()["aud"] for a in answers} == {"https://one-abc.a.run.app", "https://two-abc.a.run.app"}
    assert fake.token_requests_to("oauth2_id_token") - before == 2  # one per audience, however concurrent


def test_each_cloud_function_gets_an_id_token_for_its_own_url(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    """A 1st-gen Cloud Function accepts only its function URL as audience, not https://HOST."""
    before = fake.token_requests_to("oauth2_id_token")
    proxy = proxy_factory("--resolve", "*.cloudfunctions.net={}:{}".format(*fake.run_addr),
                          "--id-token-host", "*.cloudfunctions.net")
    session = session_via(proxy)
    base = "https://us-central1-fake-project.cloudfunctions.net"
    answers = [session.get(base + path, timeout=20) for path in ("/hello", "/hello/sub?x=1", "/goodbye", "/hello")]
    assert [a.status_code for a in answers] == [200] * 4, answers[0].text
    assert [a.json()["aud"] for a in answers] == [base + "/hello", base + "/hello", base + "/goodbye", base + "/hello"]
    assert fake.token_requests_to("oauth2_id_token") - before == 2  # one per function


def test_a_client_spraying_new_audiences_gets_429_not_a_grant_each(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Each new *.a.run.app name is a new audience and a token grant; past the budget (100 at once,
    then 10 a second; 5 and 0.5 here, so that this machine can outrun it) a request gets 429."""
    from addons import token_sources

    monkeypatch.setattr(token_sources, "NEW_AUDIENCE_BURST", 5)
    monkeypatch.setattr(token_sources, "NEW_AUDIENCES_PER_SECOND", 0.5)
    before = fake.token_requests_to("oauth2_id_token")
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app")  # in this process: patched
    session = session_via(proxy)
    session.proxies["http"] = session.proxies["https"]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # plain http://: upgraded to TLS upstream
        answers = list(pool.map(lambda i: session.get(f"http://s{i}-abc.a.run.app/", timeout=20), range(30)))
    elapsed = time.monotonic() - started
    statuses = [a.status_code for a in answers]
    grants = fake.token_requests_to("oauth2_id_token") - before
    assert grants == statuses.count(200) <= 5 + 0.5 * elapsed + 1, (elapsed, statuses)
    assert statuses.count(429) == 30 - grants
    refused = next(a for a in answers if a.status_code == 429).json()["error"]
    assert refused["status"] == "RESOURCE_EXHAUSTED" and "too many new ID-token audiences" in refused["message"]
    allowed = next(i for i, a in enumerate(answers) if a.status_code == 200)
    assert session.get(f"http://s{allowed}-abc.a.run.app/", timeout=20).status_code == 200  # a known one: no budget


def test_the_clients_own_authorization_reaches_the_app(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app")
    answer = session_via(proxy).get(RUN_URL, headers={"Authorization": "Bearer app-level-token"}, timeout=20)
    assert answer.status_code == 200, answer.text
    assert answer.json()["app_authorization"] == "Bearer app-level-token"
    assert answer.json()["email"] == SA


def test_iap_audience_and_an_impersonated_id_token(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    client_id = "123456-abcdef.apps.googleusercontent.com"
    fake.add_run_audience("iap-abc.a.run.app", client_id)
    fake.grant_token_creator(SA, TARGET)
    before = fake.token_requests_to("generate_id_token")
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", f"iap-abc.a.run.app={client_id}",
                          "--impersonate-service-account", TARGET)
    answer = session_via(proxy).get("https://iap-abc.a.run.app/", timeout=20)
    assert answer.status_code == 200, answer.text
    assert answer.json()["aud"] == client_id and answer.json()["email"] == TARGET
    assert fake.token_requests_to("generate_id_token") - before == 1


def test_cloud_run_without_a_route_is_tunnelled_and_refused_by_run(proxy_factory: ProxyFactory,
                                                                   fake: FakeGoogle) -> None:
    proxy = proxy_factory(*run_resolve(fake))
    answer = session_via(proxy, verify=str(fake.run_ca_pem)).get(RUN_URL, timeout=20)
    assert answer.status_code == 403  # no ID token: Cloud Run's own refusal, not ours


# -- routes per proxy user --------------------------------------------------------------------------

def sha_entry(user: str, password: str) -> str:
    return f"{user}:{{SHA}}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def test_two_proxy_users_act_as_two_service_accounts(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                     tmp_path: Path) -> None:
    alice_sa, bob_sa = "alice-sa@fake-project.iam.gserviceaccount.com", "bob-sa@fake-project.iam.gserviceaccount.com"
    fake.grant_token_creator(SA, alice_sa)
    fake.grant_token_creator(SA, bob_sa)
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(sha_entry("alice", "a-pass") + "\n" + sha_entry("bob", "b-pass") + "\n")
    config = tmp_path / "policy.toml"
    config.write_text(f"""
[[route]]
name = "alice"
hosts = ["*.googleapis.com"]
proxy_users = ["alice"]
credential = {{ impersonate = ["{alice_sa}"] }}

[[route]]
name = "bob"
hosts = ["*.googleapis.com"]
proxy_users = ["bob"]
credential = {{ impersonate = ["{bob_sa}"] }}
""")
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--config", str(config), "--proxy-auth", f"@{htpasswd}", "--audit-log", str(audit))
    for user, password in (("alice", "a-pass"), ("bob", "b-pass")):
        session = session_via(proxy)
        session.proxies = {"https": f"http://{user}:{password}@127.0.0.1:{proxy.port}"}
        answer = session.get(OBJECT_URL, timeout=20)
        assert answer.status_code == 200, answer.text
    principals = [fake.principal_of(t) for t in api_tokens(fake)]
    assert principals == [alice_sa, bob_sa]
    records = read_records(audit)
    assert [(r["proxy_user"], r["principal"], r["route"]) for r in records] == [
        ("alice", alice_sa, "alice"), ("bob", bob_sa, "bob")]
    assert "a-pass" not in audit.read_text() and "b-pass" not in audit.read_text()


def test_key_file_route_and_a_none_route(proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path) -> None:
    key = fake.write_service_account_key(tmp_path / "other-key.json")
    config = tmp_path / "policy.toml"
    config.write_text(f"""
[[route]]
name = "logs by key"
hosts = ["storage.googleapis.com"]
paths = ["/storage/v1/b/demo-bucket/o/hello.txt"]
credential = {{ key_file = "{key}" }}

[[route]]
name = "public listing"
hosts = ["storage.googleapis.com"]
paths = ["/storage/v1/b/demo-bucket/o"]
credential = "none"
""")
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--config", str(config), "--audit-log", str(audit))
    session = session_via(proxy)
    assert session.get(OBJECT_URL, timeout=20).status_code == 200
    session.get("https://storage.googleapis.com/storage/v1/b/demo-bucket/o", timeout=20)
    by_path = {r["path"]: r for r in read_records(audit)}
    assert by_path["/storage/v1/b/demo-bucket/o/hello.txt"]["credential"] == "key_file"
    assert by_path["/storage/v1/b/demo-bucket/o/hello.txt"]["route"] == "logs by key"
    listing = by_path["/storage/v1/b/demo-bucket/o"]
    assert (listing["credential"], listing["auth"], listing["token_id"]) == ("none", "none", None)
    listed = [r for r in fake.requests if r.path == "/storage/v1/b/demo-bucket/o"]
    assert listed and listed[0].authorization is None


def test_unreadable_key_file_stops_the_start_with_one_sentence(proxy_process_factory, fake: FakeGoogle,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text('[[route]]\nhosts = ["storage.googleapis.com"]\ncredential = { key_file = "/nonexistent/k.json" }\n')
    proxy = proxy_process_factory("--config", str(config), expect_listen=False)
    assert proxy.proc.wait(30) == 64
    text = proxy.text()
    assert f"{config}:1" in text and "/nonexistent/k.json" in text and "Traceback" not in text


def test_impersonation_loop_is_refused_at_start(proxy_process_factory, tmp_path: Path) -> None:
    proxy = proxy_process_factory("--impersonate-service-account", f"{TARGET},{DELEGATE},{TARGET}",
                                  expect_listen=False)
    assert proxy.proc.wait(30) == 64
    assert "loops" in proxy.text() and "Traceback" not in proxy.text()


def test_requests_to_the_token_endpoints_stay_untouched(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    fake.grant_token_creator(SA, TARGET)
    proxy = proxy_factory("--impersonate-service-account", TARGET)
    answer = session_via(proxy).post("https://oauth2.googleapis.com/token", data={"grant_type": "nonsense"},
                                     timeout=20)
    assert answer.status_code == 400
    assert isinstance(answer.json()["error"], str)  # the token endpoint's own OAuth error, not ours


def test_ids_are_never_mixed_up_between_run_and_apis(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app")
    session = session_via(proxy)
    assert session.get(RUN_URL, timeout=20).status_code == 200
    assert session.get(OBJECT_URL, timeout=20).status_code == 200
    (api,) = api_tokens(fake)
    assert api.startswith("ya29.")  # an access token for the API, an ID token for Run
    assert not fake.leaks


def test_an_id_token_host_needs_an_id_token_capable_credential(proxy_process_factory, fake: FakeGoogle,
                                                               tmp_path: Path) -> None:
    user = fake.write_authorized_user(tmp_path / "user.json")
    proxy = proxy_process_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app", credentials=user)
    answer = session_via(proxy).get(RUN_URL, timeout=20)
    assert answer.status_code == 403
    message = answer.json()["error"]["message"]
    assert "--impersonate-service-account" in message
    assert not [r for r in fake.run_requests()]  # nothing went to Cloud Run


def test_an_id_token_follows_the_same_destination_rule(proxy_factory: ProxyFactory, fake: FakeGoogle) -> None:
    """The ID-token route goes through the same check as access tokens: a Host that names another
    Cloud Run service than the TLS server name gets 421 and nothing reaches Cloud Run."""
    proxy = proxy_factory(*run_resolve(fake), "--id-token-host", "*.a.run.app")
    answer = session_via(proxy).get(RUN_URL, headers={"Host": "other-abc.a.run.app"}, timeout=20)
    assert answer.status_code == 421
    assert fake.run_requests() == []
    assert not fake.issued_id_tokens or all(t not in answer.text for t in fake.issued_id_tokens)


def test_a_none_route_tunnels_its_host_untouched(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                  tmp_path: Path) -> None:
    """The client sees Google's own certificate (no interception) and the request carries no token."""
    config = tmp_path / "policy.toml"
    config.write_text('[[route]]\nname = "public"\nhosts = ["storage.googleapis.com"]\ncredential = "none"\n')
    proxy = proxy_factory("--config", str(config))
    untouched = session_via(proxy, verify=str(fake.google_ca_pem)).get(OBJECT_URL, timeout=20)
    assert untouched.status_code in (401, 403)  # the fake's own answer to a call without a token
    assert [r.authorization for r in fake.requests if r.path.startswith("/storage/v1/b/demo-bucket")] == [None]
    other = session_via(proxy).get("https://compute.googleapis.com/compute/v1/projects/fake-project/zones/"
                                   "us-central1-a/instances", timeout=20)
    assert other.status_code == 200  # the rest of *.googleapis.com is still intercepted, with a token
