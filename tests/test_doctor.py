"""`gcp-auth-proxy doctor`: in-process through cli.main, against the fake Google and a real proxy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from fakegoogle import FakeGoogle
from proxy import cli, doctor, trust
from proxy.settings import from_sources
from tests.conftest import ProxyFactory
from tests.proxyproc import GOOGLE_AUTH_ENV, ROOT, proxy_args


@pytest.fixture
def shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A shell with no credentials anywhere: no key file, an empty gcloud config, no metadata server."""
    for name, value in GOOGLE_AUTH_ENV.items():
        monkeypatch.setenv(name, value)
    gcloud = tmp_path / "gcloud"
    gcloud.mkdir()
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(gcloud))
    return monkeypatch


def doctor_args(fake: FakeGoogle, tmp_path: Path, *extra: str) -> list[str]:
    """`doctor` with the options it shares with serve: the fake reached through --resolve and
    --upstream-ca (the flags proxy_args gives serve, minus --listen, which doctor does not take)."""
    args = proxy_args(fake, tmp_path / "confdir", *extra)
    i = args.index("--listen")
    return ["doctor", *args[:i], *args[i + 2:]]


def entries(output: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, rest of the line), from the text screen."""
    out = {}
    for line in output.splitlines()[:-1]:
        status, rest = line.split(None, 1)
        for check in (c for c in _CHECKS if rest.startswith(c + "  ")):
            out[check] = (status, rest[len(check):].strip())
    return out


_CHECKS = ("credentials", "token", "clock", "confdir", "proxy CA", "proxy variables", "who may connect",
           "user namespaces", *(f"trust {v}" for v in doctor.TRUST_VARIABLES))


def test_no_credentials_fails_with_exit_1(shell: pytest.MonkeyPatch, fake: FakeGoogle, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]):
    fetched = fake.token_requests  # the fake's counters are for the whole session
    code = cli.main(doctor_args(fake, tmp_path))
    out = capsys.readouterr().out
    assert code == 1, out
    seen = entries(out)
    assert seen["credentials"][0] == "FAIL" and "GOOGLE_APPLICATION_CREDENTIALS" in seen["credentials"][1]
    assert seen["token"][0] == "FAIL"
    assert seen["confdir"][0] == "OK"  # not created, only checked
    assert not (tmp_path / "confdir").exists()
    assert out.splitlines()[-1].startswith("2 failed")
    assert fake.token_requests == fetched


def test_service_account_mints_a_token_through_resolve_and_upstream_ca(
        shell: pytest.MonkeyPatch, fake: FakeGoogle, sa_key: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_key))
    fetched = fake.oauth2_token_requests
    code = cli.main(doctor_args(fake, tmp_path))
    out = capsys.readouterr().out
    seen = entries(out)
    email = json.loads(sa_key.read_text())["client_email"]
    assert seen["credentials"] == ("OK", seen["credentials"][1])
    assert f"service_account credentials for {email}" in seen["credentials"][1]
    assert str(sa_key) in seen["credentials"][1]
    assert seen["token"][0] == "OK" and "minted one in" in seen["token"][1]
    assert seen["clock"][0] == "OK"  # the fake's Date header, this machine's clock
    assert fake.oauth2_token_requests == fetched + 1
    assert not any(t in out for t in fake.issued_tokens if t), "doctor printed a token"
    # Only this shell is not set up (no CA yet, no variables): warnings, no failure.
    assert "FAIL" not in out and code == 0
    assert seen["proxy CA"][0] == "WARN" and seen["proxy variables"][0] == "WARN"


def test_token_goes_through_the_upstream_proxy_when_one_is_set(
        shell: pytest.MonkeyPatch, fake: FakeGoogle, sa_key: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_key))
    host, port = fake.connect_proxy_addr
    shell.setenv("GCP_AUTH_PROXY_UPSTREAM_PROXY", f"http://{host}:{port}")
    fake.connect_proxy.reset()
    try:
        code = cli.main(doctor_args(fake, tmp_path))
        seen = entries(capsys.readouterr().out)
        asked = fake.connect_proxy.asked
    finally:
        fake.connect_proxy.reset()
    assert code == 0
    assert seen["token"][0] == "OK" and "through the upstream proxy" in seen["token"][1]
    assert any(a.relayed for a in asked), "the token fetch did not go through the upstream proxy"


def test_token_endpoint_failure_is_a_failure(shell: pytest.MonkeyPatch, fake: FakeGoogle, sa_key: Path,
                                             tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_key))
    fake.set_token_failure("invalid_grant")
    code = cli.main(doctor_args(fake, tmp_path))
    out = capsys.readouterr().out
    seen = entries(out)
    assert code == 1
    assert seen["credentials"][0] == "OK"
    assert seen["token"][0] == "FAIL" and "invalid_grant" in seen["token"][1]


def test_running_proxy_and_this_shell_set_up_for_it(
        proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]):
    pp = proxy_factory()  # sets GOOGLE_APPLICATION_CREDENTIALS and the google-auth variables
    bundle = trust.client_bundle(pp.confdir, pp.ca_cert)
    monkeypatch.setenv("HTTPS_PROXY", pp.url)
    monkeypatch.setenv("https_proxy", pp.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # public roots only: lacks the proxy CA
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    args = doctor_args(fake, tmp_path)
    args[args.index("--confdir") + 1] = str(pp.confdir)
    code = cli.main(args)
    seen = entries(capsys.readouterr().out)
    assert code == 0
    assert seen["proxy CA"][0] == "OK" and str(pp.ca_cert) in seen["proxy CA"][1]
    assert seen["trust REQUESTS_CA_BUNDLE"][0] == "OK"
    assert seen["trust SSL_CERT_FILE"][0] == "WARN" and "lacks the proxy CA" in seen["trust SSL_CERT_FILE"][1]
    assert seen["trust CURL_CA_BUNDLE"][0] == "WARN" and "not set" in seen["trust CURL_CA_BUNDLE"][1]
    assert seen["proxy variables"] == ("OK", f"HTTPS_PROXY={pp.url}, https_proxy={pp.url}")
    result = doctor.probe_proxy(pp.url)
    assert (result.status, result.message) == ("OK", "gcp-auth-proxy is listening and answering")


def test_json_is_a_list_of_entries(shell: pytest.MonkeyPatch, fake: FakeGoogle, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]):
    code = cli.main([*doctor_args(fake, tmp_path), "--json"])
    parsed = json.loads(capsys.readouterr().out)
    assert code == 1
    assert isinstance(parsed, list) and parsed
    assert all(set(e) == {"status", "check", "message", "fix"} for e in parsed)
    assert {e["status"] for e in parsed} <= {"OK", "WARN", "FAIL"}
    assert all((e["fix"] is None) == (e["status"] == "OK") for e in parsed)
    by_check = {e["check"]: e for e in parsed}
    assert by_check["credentials"]["status"] == "FAIL"
    assert set(_CHECKS) <= set(by_check)


def test_doctor_takes_only_its_options_from_the_table():
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices["doctor"]  # type: ignore[union-attr]
    dests = {a.dest for a in sub._actions if a.dest != "help"}
    assert dests == {"config", "confdir", "resolve", "upstream_ca", "scopes", "json", "inject_host",
                     "impersonate_service_account", "id_token_host", "proxy_auth"}
    assert cli.main(["doctor", "--listen", "127.0.0.1:1"]) == 64


# -- the credentials routes name ---------------------------------------------------------------------

TARGET = "doctor-target@fake-project.iam.gserviceaccount.com"
DELEGATE = "doctor-delegate@fake-project.iam.gserviceaccount.com"


def route_entries(output: str) -> dict[str, tuple[str, str]]:
    """route NAME -> (status, message), from the text screen."""
    out = {}
    for line in output.splitlines()[:-1]:
        status, rest = line.split(None, 1)
        if rest.startswith("route"):
            name, message = rest.split("  ", 1)
            out[name] = (status, message.strip())
    return out


def test_each_route_credential_mints_one_token(shell: pytest.MonkeyPatch, fake: FakeGoogle, sa_key: Path,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_key))
    caller = json.loads(sa_key.read_text())["client_email"]
    fake.grant_token_creator(caller, DELEGATE)
    fake.grant_token_creator(DELEGATE, TARGET)
    other_key = fake.write_service_account_key(tmp_path / "other.json")
    config = tmp_path / "policy.toml"
    config.write_text(f"""
[[route]]
name = "reports"
hosts = ["storage.googleapis.com"]
credential = {{ key_file = "{other_key}" }}

[[route]]
name = "service"
hosts = ["*.a.run.app"]
credential = {{ id_token = {{ audience = "https://service.example" }} }}

[[route]]
name = "again"
hosts = ["bigquery.googleapis.com"]
credential = {{ key_file = "{other_key}" }}
""")
    before = (fake.generate_access_token_calls, fake.token_requests_to("oauth2_id_token"))
    code = cli.main(doctor_args(fake, tmp_path, "--config", str(config),
                                "--impersonate-service-account", f"{DELEGATE},{TARGET}"))
    out = capsys.readouterr().out
    seen = route_entries(out)
    assert code == 0, out
    assert seen["routes"][0] == "OK" and "4 route(s), 0 rule(s), default allow" in seen["routes"][1]
    assert seen["route reports"][0] == "OK" and f"key file {other_key}: minted one" in seen["route reports"][1]
    assert "route again" not in seen  # the same credential is tried once
    assert seen["route service"][0] == "OK"
    assert "ID token for audience https://service.example" in seen["route service"][1]
    assert seen["route --inject-host *.googleapis.com"][0] == "OK"
    assert f"impersonate {TARGET} via {DELEGATE}: minted one" in seen["route --inject-host *.googleapis.com"][1]
    assert f"as {TARGET}" in seen["route --inject-host *.googleapis.com"][1]
    assert (fake.generate_access_token_calls - before[0], fake.token_requests_to("oauth2_id_token") - before[1]) \
        == (1, 1)
    assert not any(t in out for t in (*fake.issued_tokens, *fake.issued_id_tokens) if t), "doctor printed a token"


def test_a_route_credential_that_cannot_mint_fails(shell: pytest.MonkeyPatch, fake: FakeGoogle, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.write_authorized_user(tmp_path / "user.json")))
    fake.add_service_account(TARGET)  # exists, but nobody may impersonate it
    code = cli.main(doctor_args(fake, tmp_path, "--id-token-host", "*.a.run.app",
                                "--impersonate-service-account", TARGET))
    out = capsys.readouterr().out
    seen = route_entries(out)
    assert code == 1, out
    failed = seen["route --inject-host *.googleapis.com"]
    assert failed[0] == "FAIL" and "iam.serviceAccounts.getAccessToken" in failed[1] and TARGET in failed[1]
    assert "roles/iam.serviceAccountTokenCreator" in failed[1]
    id_token = seen["route --id-token-host *.a.run.app"]
    assert id_token[0] == "FAIL" and "https://example.a.run.app" in id_token[1]
    assert "iam.serviceAccounts.getOpenIdToken" in id_token[1]
    assert "Traceback" not in out


def test_gcloud_user_asked_for_id_tokens_is_told_to_impersonate(shell: pytest.MonkeyPatch, fake: FakeGoogle,
                                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(fake.write_authorized_user(tmp_path / "user.json")))
    code = cli.main(doctor_args(fake, tmp_path, "--id-token-host", "hello.a.run.app"))
    seen = route_entries(capsys.readouterr().out)
    assert code == 1
    status, message = seen["route --id-token-host hello.a.run.app"]
    assert status == "FAIL" and "https://hello.a.run.app" in message and "--impersonate-service-account" in message


def test_a_broken_policy_is_a_usage_error(shell: pytest.MonkeyPatch, fake: FakeGoogle, sa_key: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]):
    shell.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_key))
    config = tmp_path / "policy.toml"
    config.write_text('[[rule]]\nname = "x"\nactoin = "deny"\n')
    code = cli.main(doctor_args(fake, tmp_path, "--config", str(config)))
    captured = capsys.readouterr()
    assert code == 64 and not captured.out  # as serve would: one sentence, before any check
    assert f"{config}:3" in captured.err and "did you mean action?" in captured.err
    assert "Traceback" not in captured.err


# -- pieces -----------------------------------------------------------------------------------------------

@pytest.fixture
def answering(request: pytest.FixtureRequest) -> Iterator[str]:
    """A loopback server that answers one connection with ``request.param`` and closes it."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(request.param)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    thread.join(5)
    server.close()
    assert not thread.is_alive(), "the probe never connected"


@pytest.mark.parametrize(("answering", "status", "needle"), [
    (b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", "WARN",
     f"refuses this user (uid {os.geteuid()})"),
    (b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n", "WARN", "wants credentials"),
    (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n", "WARN", "not gcp-auth-proxy"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "WARN", "does not speak HTTP"),
], indirect=["answering"])
def test_probe_tells_what_answers(answering: str, status: str, needle: str):
    result = doctor.probe_proxy(answering)
    assert result.status == status and needle in result.message and result.fix


def test_probe_of_a_closed_port_warns():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    result = doctor.probe_proxy(f"127.0.0.1:{port}")
    assert result.status == "WARN" and "nothing answers" in result.message


def test_probe_hides_a_password_in_the_url():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    result = doctor.probe_proxy(f"http://user:s3cret@127.0.0.1:{port}")
    assert "s3cret" not in result.check + result.message


def test_bundle_contains_compares_certificates(tmp_path: Path):
    confdir = tmp_path / "c"
    ca = trust.ensure_ca(confdir)
    entry, der = doctor.check_ca(confdir)
    assert entry.status == "OK" and der is not None
    junk = b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n"
    with_ca = tmp_path / "with.pem"
    with_ca.write_bytes(Path(certifi.where()).read_bytes() + junk + ca.read_bytes())
    assert doctor.bundle_contains(with_ca, der)
    assert not doctor.bundle_contains(Path(certifi.where()), der)


def test_unusable_ca_fails(tmp_path: Path):
    confdir = tmp_path / "c"
    trust.ensure_ca(confdir)
    (confdir / trust.CA_KEY_NAME).write_text("not a key\n")
    entry, der = doctor.check_ca(confdir)
    assert entry.status == "FAIL" and der is None and entry.fix


def test_unwritable_confdir_fails(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert doctor.check_confdir(blocker).status == "FAIL"
    assert doctor.check_confdir(blocker / "sub").status == "FAIL"
    assert doctor.check_confdir(tmp_path / "new" / "dir").status == "OK"


@pytest.mark.parametrize(("skew", "status", "needle"), [
    (0.4, "OK", "within 1 s"), (-12.0, "OK", "within 12 s"), (45.0, "WARN", "45 s behind"),
    (-400.0, "WARN", "400 s ahead of"), (None, "WARN", "not compared"),
])
def test_clock_entry(skew: float | None, status: str, needle: str):
    entry = doctor._clock_entry(skew)
    assert entry.status == status and needle in entry.message


@pytest.mark.parametrize(("environ", "bypass"), [
    ({}, None),
    ({"NO_PROXY": "localhost,127.0.0.1"}, None),
    ({"NO_PROXY": ".googleapis.com"}, "NO_PROXY=.googleapis.com"),
    ({"no_proxy": "*.googleapis.com"}, "no_proxy=*.googleapis.com"),
    ({"NO_PROXY": "googleapis.com"}, "NO_PROXY=googleapis.com"),
    ({"NO_PROXY": "storage.googleapis.com"}, "NO_PROXY=storage.googleapis.com"),
    ({"NO_PROXY": "*"}, "NO_PROXY=*"),
    ({"NO_PROXY": "evilgoogleapis.com,.com.evil"}, None),
])
def test_no_proxy_that_bypasses_google(environ: dict[str, str], bypass: str | None):
    assert doctor._no_proxy_bypasses_google(environ) == bypass


def test_disagreeing_proxy_variables_warn():
    seen = list(doctor.check_proxy_variables(
        {"HTTPS_PROXY": "http://127.0.0.1:1", "https_proxy": "http://127.0.0.1:2"},
        probe=lambda url: doctor.ok(f"proxy {url}", "probed")))
    assert seen[0].status == "WARN" and "disagree" in seen[0].message
    assert [e.check for e in seen[1:]] == ["proxy http://127.0.0.1:1", "proxy http://127.0.0.1:2"]


def test_user_namespaces_refused_is_a_warning():
    entry = doctor.check_user_namespaces(flags=-1)  # flags no kernel accepts: EINVAL
    assert entry.status == "WARN" and "Invalid argument" in entry.message and entry.fix


def test_user_namespaces_while_this_process_has_threads(proxy_factory: ProxyFactory):
    """With the in-process proxy's threads (and the fake's gRPC ones) alive the answer is the
    machine's, not this process's: the same as from a fresh interpreter."""
    proxy_factory()
    script = "from proxy import doctor; print(doctor.check_user_namespaces().status)"
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert doctor.check_user_namespaces().status == fresh.stdout.strip()


def test_settings_for_doctor_come_from_the_environment_too(tmp_path: Path):
    s = from_sources({"confdir": None}, environ={"GCP_AUTH_PROXY_CONFDIR": str(tmp_path)})
    assert s.confdir == tmp_path
