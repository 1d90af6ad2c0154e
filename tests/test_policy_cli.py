"""``policy check`` and ``policy explain``: in-process through cli.main, once as a real process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from addons.policy_model import Policy, Route
from proxy import cli, policy_cli
from proxy.errors import ExitStatus
from tests.proxyproc import ROOT, base_env

POLICY = """\
default = "deny"

[[route]]
name = "logs-reader"
hosts = ["storage.googleapis.com"]
paths = ["/storage/v1/b/logs-1"]
credential = { impersonate = ["reader@p.iam.gserviceaccount.com"] }

[[route]]
name = "alice-everywhere"
hosts = ["*.googleapis.com"]
proxy_users = ["alice"]
credential = { impersonate = ["alice-sa@p.iam.gserviceaccount.com"] }

[[route]]
name = "example-pass"
hosts = ["example.com"]
credential = "none"

[[rule]]
name = "read-logs"
action = "allow"
api_methods = ["storage.objects.get"]
resources = ["projects/_/buckets/logs-*/objects/**"]

[[rule]]
name = "read-logs-twice"
action = "allow"
api_methods = ["storage.objects.get"]
resources = ["projects/_/buckets/logs-*/objects/**"]

[[rule]]
name = "pypi"
action = "allow"
hosts = ["pypi.org"]
ports = [443]
"""

SA = "reader@p.iam.gserviceaccount.com"
STORAGE = "https://storage.googleapis.com/storage/v1"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    # {SHA} entries: cheap to check; the passwords do not matter here.
    path.write_text("alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\nbob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- check -------------------------------------------------------------------------------------------

def test_check_prints_routes_in_evaluation_order_rules_default_and_warnings(capsys, config, htpasswd):
    code, out, err = run(capsys, "policy", "check", "--config", str(config), "--proxy-auth", f"@{htpasswd}")
    assert code == ExitStatus.OK, err
    routes = out.index("routes, most specific first")
    rules = out.index("rules, first match wins")
    # The user's route first (a user's route beats everyone's), then the exact hosts, then the flag.
    order = [out.index(name, routes) for name in
             ("1. alice-everywhere", "2. logs-reader", "3. example-pass", "4. --inject-host *.googleapis.com")]
    assert order == sorted(order) and order[-1] < rules
    assert f"credential: impersonate {SA}" in out
    assert "credential: none (no token added)" in out
    assert "users: alice" in out and "paths: /storage/v1/b/logs-1" in out
    assert f"({config}:3)" in out  # the route's origin, FILE:LINE
    assert out.index("1. read-logs: allow") < out.index("2. read-logs-twice") < out.index("3. pypi: allow")
    assert "resource matches projects/_/buckets/logs-*/objects/**" in out
    assert "when host is pypi.org and port is 443" in out
    assert "default: deny" in out
    warnings = [line for line in out.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "'read-logs-twice' can never match" in warnings[0]
    assert f"{config}:" in warnings[0]


def test_check_without_a_config_shows_the_flag_routes(capsys):
    code, out, _ = run(capsys, "policy", "check", "--inject-host", "storage.googleapis.com",
                       "--impersonate-service-account", SA, "--default-deny")
    assert code == ExitStatus.OK
    assert "config: none" in out
    assert "1. --inject-host storage.googleapis.com  (--inject-host)" in out
    assert f"credential: impersonate {SA}" in out
    assert "default: deny" in out and "warning:" not in out


def test_check_reads_the_config_from_the_environment(capsys, config, htpasswd, monkeypatch):
    monkeypatch.setenv("GCP_AUTH_PROXY_CONFIG", str(config))
    monkeypatch.setenv("GCP_AUTH_PROXY_PROXY_AUTH", f"@{htpasswd}")
    code, out, _ = run(capsys, "policy", "check")
    assert code == ExitStatus.OK
    assert f"config: {config}" in out and "logs-reader" in out


@pytest.mark.parametrize("text, line, needle", [
    ('[[rule]]\nname = "r"\naction = "allow"\napi_method = ["storage.objects.get"]\n', 4, "api_method"),
    ('default = "deny"\n\n[[route]]\nname = "x"\nhost = ["a.example"]\n', 5, "host"),
    ('[[rule]]\nname = "r"\naction = "permit"\n', 3, "action"),
])
def test_check_names_file_line_and_key_of_a_mistake(capsys, tmp_path, text, line, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    code, out, err = run(capsys, "policy", "check", "--config", str(path))
    assert code == ExitStatus.USAGE
    assert out == ""
    assert err.startswith(f"gcp-auth-proxy: {path}:{line}:") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_check_refuses_proxy_users_without_proxy_auth(capsys, config):
    code, _, err = run(capsys, "policy", "check", "--config", str(config))
    assert code == ExitStatus.USAGE
    assert "alice-everywhere" in err and "--proxy-auth" in err and err.count("\n") == 1


def test_check_refuses_a_bad_flag(capsys):
    code, _, err = run(capsys, "policy", "check", "--inject-host", "*")
    assert code == ExitStatus.USAGE and "--inject-host" in err and "Traceback" not in err


# -- explain -----------------------------------------------------------------------------------------

def explain(capsys, config, htpasswd, *args: str) -> tuple[int, str, str]:
    return run(capsys, "policy", "explain", "--config", str(config), "--proxy-auth", f"@{htpasswd}", *args)


def test_explain_a_recognised_call_names_route_why_credential_and_rule(capsys, config, htpasswd):
    code, out, err = explain(capsys, config, htpasswd, "GET", f"{STORAGE}/b/logs-1/o/2024%2Fa.txt")
    assert code == ExitStatus.OK, err
    assert ("recognised: service storage, API method storage.objects.get, "
            "resource projects/_/buckets/logs-1/objects/2024/a.txt") in out
    assert f"route: logs-reader ({config}:3): the most specific of 2 matching routes: " in out
    assert "an exact host name beats a wildcard" in out
    assert "also matched: --inject-host *.googleapis.com (--inject-host)" in out
    assert f"credential: impersonate {SA}" in out
    assert f"decision: allow: rule 'read-logs' ({config}:" in out


def test_explain_a_call_no_rule_allows_falls_to_the_default(capsys, config, htpasswd):
    code, out, _ = explain(capsys, config, htpasswd, "DELETE", f"{STORAGE}/b/logs-1/o/a.txt")
    assert code == ExitStatus.OK
    assert "API method storage.objects.delete" in out
    assert "decision: deny: no rule matched: the default is deny" in out


def test_explain_an_unrecognised_call(capsys, config, htpasswd):
    code, out, _ = explain(capsys, config, htpasswd, "GET", "https://foo.googleapis.com/v1/things")
    assert code == ExitStatus.OK
    assert "recognised: service foo, no API method" in out
    assert "route: --inject-host *.googleapis.com (--inject-host): the only route that matches" in out
    assert "credential: ADC" in out
    assert "decision: deny" in out


def test_explain_a_tunnelled_host_evaluates_the_tunnel(capsys, config, htpasswd):
    code, out, _ = explain(capsys, config, htpasswd, "GET", "https://pypi.org/simple/")
    assert code == ExitStatus.OK
    assert "tunnelled untouched" in out
    assert "decision: allow: rule 'pypi'" in out
    code, out, _ = explain(capsys, config, htpasswd, "GET", "https://pypi.org:8443/simple/")
    assert "decision: deny: no rule allows this tunnel: the default is deny" in out  # the rule names 443 only
    code, out, _ = explain(capsys, config, htpasswd, "GET", "https://evil.example/")
    assert "tunnelled untouched" in out
    assert "decision: deny: no rule allows this tunnel: the default is deny" in out
    code, out, _ = explain(capsys, config, htpasswd, "GET", "https://example.com/")
    assert "route example-pass" in out and "adds no credential" in out


def test_explain_plain_http_is_decided_request_by_request(capsys, config, htpasswd):
    """The proxy sees plain http:// requests (no tunnel), so every rule applies to them."""
    code, out, _ = explain(capsys, config, htpasswd, "GET", "http://evil.example/x")
    assert code == ExitStatus.OK
    assert "tunnelled" not in out and "plain http:// is seen request by request" in out
    assert "decision: deny: no rule matched: the default is deny" in out


def test_explain_routes_by_proxy_user(capsys, config, htpasswd):
    url = f"{STORAGE}/b/logs-1/o/a.txt"
    code, out, _ = explain(capsys, config, htpasswd, "--user", "alice", "GET", url)
    assert code == ExitStatus.OK
    assert "(proxy user alice)" in out
    assert "route: alice-everywhere" in out and "a user's own route beats one for everyone" in out
    assert "credential: impersonate alice-sa@p.iam.gserviceaccount.com" in out
    _, out, _ = explain(capsys, config, htpasswd, "--user", "bob", "GET", url)
    assert "route: logs-reader" in out and "alice" not in out


def test_explain_json(capsys, config, htpasswd):
    code, out, _ = explain(capsys, config, htpasswd, "--json", "GET", f"{STORAGE}/b/logs-1/o/a.txt")
    assert code == ExitStatus.OK
    data = json.loads(out)
    assert data["api_method"] == "storage.objects.get" and (data["host"], data["port"]) == ("storage.googleapis.com", 443)
    assert data["route"]["name"] == "logs-reader" and data["route"]["credential"] == "impersonated"
    assert [r["name"] for r in data["other_matching_routes"]] == ["--inject-host *.googleapis.com"]
    assert data["decision"] == {"action": "allow", "rule": "read-logs", "origin": f"{config}:20",
                                "reason": f"rule 'read-logs' ({config}:20) matched"}


@pytest.mark.parametrize("args, needle", [
    (["GET", "storage.googleapis.com/x"], "not an http:// or https:// URL"),
    (["GET", "ftp://storage.googleapis.com/x"], "not an http:// or https:// URL"),
    (["GET", "https://storage.googleapis.com:99999/x"], "not a URL"),
    (["G T", "https://storage.googleapis.com/x"], "not an HTTP method"),
    (["--user", "carol", "GET", "https://storage.googleapis.com/x"], "no such user"),
])
def test_explain_bad_input_is_one_sentence(capsys, config, htpasswd, args, needle):
    code, out, err = explain(capsys, config, htpasswd, *args)
    assert code == ExitStatus.USAGE
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_explain_user_needs_proxy_auth(capsys):
    code, _, err = run(capsys, "policy", "explain", "--user", "alice", "GET", "https://storage.googleapis.com/")
    assert code == ExitStatus.USAGE and "--proxy-auth" in err


def test_path_routes_tie_broken_by_order_and_by_path_length():
    from addons.hosts import parse_host_pattern
    from addons.policy_model import ADC

    host = (parse_host_pattern("storage.googleapis.com"),)
    first = Route("first", host, ADC, origin="f:1")
    second = Route("second", host, ADC, origin="f:2")
    deeper = Route("deeper", host, ADC, paths=("/storage/v1/b/x",), origin="f:3")
    result = policy_cli.explain(Policy((first, second)), "GET", f"{STORAGE}/b/x/o/y")
    assert result.route is first and "it comes first" in result.why_route
    result = policy_cli.explain(Policy((first, deeper)), "GET", f"{STORAGE}/b/x/o/y")
    assert result.route is deeper and "a route whose paths match beats one without paths" in result.why_route


def test_policy_check_as_a_real_process(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[rule]]\nname = "r"\nactoin = "allow"\n')
    proc = subprocess.run([sys.executable, "-m", "proxy", "policy", "check", "--config", str(path)],
                          cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == ExitStatus.USAGE
    assert proc.stderr.startswith(f"gcp-auth-proxy: {path}:3:") and "actoin" in proc.stderr
    assert "did you mean action?" in proc.stderr and "Traceback" not in proc.stderr
