"""addons/policy_file.py: [[route]], [[rule]] and default from the config file, the shorthand flags,
and every bad input as one sentence naming FILE:LINE and the key (also through the CLI's loader)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from addons.hosts import parse_host_pattern
from addons.policy_file import FileSections, PolicyError, build_policy, read_policy_file
from addons.policy_model import ADC, Call, Credential, Policy
from addons.routing import policy_from_options
from fakegoogle.credentials import CredentialRegistry
from proxy import cli, settings
from proxy.errors import ExitStatus, ProxyError

DELEGATE = "delegate@p.iam.gserviceaccount.com"
WRITER = "writer@p.iam.gserviceaccount.com"
IAP_SA = "iap@p.iam.gserviceaccount.com"
CLIENT_ID = "123-abc.apps.googleusercontent.com"


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def load(tmp_path: Path, text: str, **flags) -> Policy:
    return build_policy(read_policy_file(write(tmp_path, text)), **flags)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A real service-account key, as the fake Google writes them (sa_key without starting the fake)."""
    return CredentialRegistry().write_service_account_key(tmp_path / "sa.json")


# -- a valid file -----------------------------------------------------------------------------------------

VALID = """\
default = "deny"

[[route]]
name = "adc"
hosts = ["*.googleapis.com"]

[[route]]
name = "explicit-adc"
hosts = ["BigQuery.googleapis.com"]
credential = "adc"

[[route]]
name = "passthrough"
hosts = ["example.com", "*.example.org"]
credential = "none"

[[route]]
name = "writer"
hosts = ["storage.googleapis.com"]
paths = ["/upload/storage/v1/b/logs", "/storage/v1/b/*/o"]
proxy_users = ["alice"]
credential = { impersonate = ["delegate@p.iam.gserviceaccount.com", "writer@p.iam.gserviceaccount.com"] }

[[route]]
name = "run"
hosts = ["*.a.run.app"]
credential = { id_token = {} }

[[route]]
name = "iap"
hosts = ["app.example.net"]
credential = { id_token = { audience = "123-abc.apps.googleusercontent.com", impersonate = "iap@p.iam.gserviceaccount.com" } }

[[route]]
name = "fn"
hosts = ["*.cloudfunctions.net"]
credential = { id_token = { audience = "https://fn.example.net" } }

[[route]]
name = "key"
hosts = ["compute.googleapis.com"]
credential = { key_file = "KEY" }

[[route]]
hosts = ["string-chain.example.net"]
credential = { impersonate = "delegate@p.iam.gserviceaccount.com,writer@p.iam.gserviceaccount.com" }

[[rule]]
name = "no-deletes"
action = "deny"
methods = ["delete"]

[[rule]]
name = "read-logs"
action = "allow"
api_methods = ["storage.objects.get", "storage.objects.list"]
resources = ["projects/_/buckets/logs-*/objects/**"]
proxy_users = "alice"

[[rule]]
name = "egress"
action = "allow"
hosts = ["example.com"]
"""


def test_valid_file_with_every_credential_shape(tmp_path, key_file):
    text = VALID.replace("KEY", str(key_file))
    policy = load(tmp_path, text, proxy_users={"alice", "bob"})
    path = tmp_path / "policy.toml"
    lines = text.splitlines()
    assert policy.default == "deny"
    assert policy.warnings == ()
    by_name = {r.name: r for r in policy.routes}
    assert [r.name for r in policy.routes] == ["adc", "explicit-adc", "passthrough", "writer", "run", "iap", "fn",
                                                "key", "route 9"]
    assert by_name["adc"].credential == ADC and by_name["explicit-adc"].credential == ADC
    assert by_name["explicit-adc"].hosts == (parse_host_pattern("bigquery.googleapis.com"),)
    assert by_name["passthrough"].credential == Credential("none")
    assert by_name["passthrough"].hosts == (parse_host_pattern("example.com"), parse_host_pattern("*.example.org"))
    writer = by_name["writer"]
    assert writer.credential == Credential("impersonate", chain=(DELEGATE, WRITER))
    assert writer.paths == ("/upload/storage/v1/b/logs", "/storage/v1/b/*/o")
    assert writer.proxy_users == frozenset({"alice"})
    assert by_name["run"].credential == Credential("id_token")
    assert by_name["iap"].credential == Credential("id_token", chain=(IAP_SA,), audience=CLIENT_ID)
    assert by_name["fn"].credential == Credential("id_token", audience="https://fn.example.net")
    assert by_name["key"].credential == Credential("key_file", key_file=str(key_file))
    assert by_name["route 9"].credential == Credential("impersonate", chain=(DELEGATE, WRITER))
    # origins are FILE:LINE of each [[route]] header
    for r in policy.routes:
        line = int(r.origin.rpartition(":")[2])
        assert r.origin == f"{path}:{line}" and lines[line - 1] == "[[route]]"
    assert [r.label for r in (x.credential for x in policy.routes)] == [
        "adc", "adc", "none", "impersonated", "id_token", "id_token", "id_token", "key_file", "impersonated"]

    no_deletes, read_logs, egress = policy.rules
    assert no_deletes.action == "deny" and no_deletes.methods == frozenset({"DELETE"})
    assert read_logs.api_methods == ("storage.objects.get", "storage.objects.list")
    assert read_logs.resources == ("projects/_/buckets/logs-*/objects/**",)
    assert read_logs.proxy_users == frozenset({"alice"})
    assert egress.hosts == (parse_host_pattern("example.com"),)
    assert lines[int(read_logs.origin.rpartition(":")[2]) - 1] == "[[rule]]"

    # and it decides as written
    assert policy.route_for("storage.googleapis.com", "/storage/v1/b/logs/o", "alice") is writer
    assert policy.route_for("storage.googleapis.com", "/storage/v1/b/logs/o", "bob") is by_name["adc"]
    assert policy.route_for("x.a.run.app") is by_name["run"]
    get = Call("storage.googleapis.com", "GET", "/", "storage.objects.get", "projects/_/buckets/logs-1/objects/a",
               proxy_user="alice")
    assert policy.decide(get).rule_name == "read-logs"
    assert policy.decide(Call(get.host, "DELETE", proxy_user="alice")).rule_name == "no-deletes"
    assert not policy.decide(Call("other.example.com", tunnel=True)).allowed
    assert policy.decide(Call("example.com", tunnel=True)).rule_name == "egress"
    assert [str(p) for p in policy.intercepted] == [
        "*.googleapis.com", "bigquery.googleapis.com", "storage.googleapis.com", "*.a.run.app", "app.example.net",
        "*.cloudfunctions.net", "compute.googleapis.com", "string-chain.example.net"]


def test_file_without_policy_sections_is_the_default_policy(tmp_path):
    sections = read_policy_file(write(tmp_path, 'log_format = "json"\n'))
    assert sections == FileSections()
    policy = build_policy(sections)
    assert (policy.routes, policy.rules, policy.default) == ((), (), "allow")


# -- bad input: one sentence, FILE:LINE, the key -------------------------------------------------------------

RULE = '[[rule]]\nname = "r"\naction = "allow"\n'
ROUTE = '[[route]]\nname = "rt"\nhosts = ["storage.googleapis.com"]\n'

# file text, the line the message must name, words it must contain
BAD = [
    pytest.param('default = "deny"\n\n[[rule]]\nname = "read-logs"\naction = "allow"\napi_method = ["storage.*"]\n',
                 6, ["unknown key api_method in [[rule]]", "did you mean api_methods?"], id="typo-key-in-rule"),
    pytest.param(RULE + "acton = 'deny'\n", 4, ["unknown key acton", "did you mean action?"], id="typo-action"),
    pytest.param(ROUTE + 'credentail = "adc"\n', 4, ["unknown key credentail in [[route]]", "did you mean credential?"],
                 id="typo-key-in-route"),
    pytest.param(ROUTE + 'zzz = 1\n', 4, ["unknown key zzz in [[route]]", "the keys are credential, hosts"],
                 id="unknown-key-no-suggestion"),
    pytest.param(RULE + "methods = 5\n", 4, ["key methods: expected an array of non-empty strings"], id="wrong-type-list"),
    pytest.param(RULE + 'hosts = ["a.com", 5]\n', 4, ["key hosts: expected an array"], id="wrong-type-item"),
    pytest.param(RULE + 'resources = [""]\n', 4, ["key resources: expected an array of non-empty strings"],
                 id="empty-string"),
    pytest.param('[[rule]]\nname = 5\naction = "allow"\n', 2, ["key name: expected a string"], id="wrong-type-name"),
    pytest.param(RULE + 'hosts = ["storage..googleapis.com"]\n', 4, ["key hosts", "invalid host pattern"],
                 id="bad-host-pattern-rule"),
    pytest.param('[[route]]\nhosts = ["*.com"]\n', 2, ["key hosts", "invalid host pattern '*.com'"],
                 id="bad-host-pattern-route"),
    pytest.param('[[rule]]\nname = "r"\naction = "permit"\n', 3, ["rule 'r'", "action must be \"allow\" or \"deny\"",
                                                                  "'permit'"], id="bad-action"),
    pytest.param('[[rule]]\nname = "r"\n', 1, ["rule 'r'", "action must be", "None"], id="missing-action"),
    pytest.param('[[rule]]\naction = "allow"\n', 1, ["every rule needs a name"], id="missing-name"),
    pytest.param(RULE + 'methods = ["GET", "G3T"]\n', 4, ["rule 'r'", "'G3T' is not an HTTP method"], id="bad-method"),
    pytest.param('default = "deny"\n\n[route]\nhosts = ["a.com"]\n', 3, ["key route: write each one as a [[route]] table"],
                 id="single-table-route"),
    pytest.param(RULE + 'ports = ["443"]\n', 4, ["rule 'r'", "ports must be a list of port numbers", "['443']"],
                 id="port-as-string"),
    pytest.param(RULE + 'ports = [0, 70000]\n', 4, ["rule 'r'", "(1-65535)"], id="port-out-of-range"),
    pytest.param(RULE + 'ports = 443\n', 4, ["rule 'r'", "e.g. ports = [443]"], id="ports-not-a-list"),
    pytest.param(RULE + 'ports = [true]\n', 4, ["rule 'r'", "ports must be"], id="port-bool"),
    pytest.param(RULE + 'port = [443]\n', 4, ["unknown key port", "did you mean ports?"], id="typo-ports"),
    pytest.param(RULE + 'resources = ["/storage/v1/b/logs/o/**"]\n', 4,
                 ["rule 'r'", "resource '/storage/v1/b/logs/o/**' looks like a path"], id="resource-is-a-path"),
    pytest.param(RULE + 'resources = ["gs://logs/**"]\n', 4, ["resource 'gs://logs/**' looks like a path"],
                 id="resource-is-a-url"),
    pytest.param(RULE + '\n[[rule]]\nname = "other"\naction = "deny"\n\n[[rule]]\nname = "r"\naction = "deny"\n', 10,
                 ["rule 'r' is named twice"], id="duplicate-rule-names"),
    pytest.param('default = "maybe"\n', 1, ["key default", "\"allow\" or \"deny\"", "'maybe'"], id="default-maybe"),
    pytest.param('# policy\ndefault = true\n' + RULE, 2, ["key default", "True"], id="default-bool"),
    pytest.param(RULE + '\n[[route]]\nname = "nohosts"\ncredential = "adc"\n', 5,
                 ["route 'nohosts' needs hosts"], id="route-without-hosts"),
    pytest.param('[[route]]\nhosts = []\n', 1, ["route 'route 1' needs hosts"], id="route-empty-hosts"),
    pytest.param(ROUTE + 'credential = { vault = "secret/sa" }\n', 4, ["route 'rt'", "unknown credential 'vault'"],
                 id="unknown-credential-kind"),
    pytest.param(ROUTE + 'credential = "ADC"\n', 4, ["route 'rt'", "credential must be"], id="credential-typo"),
    pytest.param(ROUTE + 'credential = { impersonate = ["a@p.iam.gserviceaccount.com", "b@p.iam.gserviceaccount.com", '
                 '"A@p.iam.gserviceaccount.com"] }\n', 4, ["route 'rt'", "impersonation chain", "loops"],
                 id="impersonation-loop"),
    pytest.param(ROUTE + 'credential = { impersonate = "not-an-email" }\n', 4,
                 ["route 'rt'", "'not-an-email', which is not a service account email"], id="impersonate-not-email"),
    pytest.param(ROUTE + 'credential = { impersonate = 5 }\n', 4, ["route 'rt'", "impersonate must be"],
                 id="impersonate-wrong-type"),
    pytest.param(ROUTE + 'credential = { impersonate = ["a@p.iam.gserviceaccount.com", 5] }\n', 4,
                 ["route 'rt'", "impersonate must be"], id="impersonate-wrong-item-type"),
    pytest.param(ROUTE + 'credential = { id_token = { impersonate = 5 } }\n', 4, ["route 'rt'", "impersonate must be"],
                 id="id-token-impersonate-wrong-type"),
    pytest.param(ROUTE + 'credential = { id_token = { audience = "not an audience" } }\n', 4,
                 ["route 'rt'", "audience 'not an audience' is neither an http(s) URL"], id="audience-not-url"),
    pytest.param(ROUTE + 'credential = { id_token = { audience = "ftp://x.example" } }\n', 4,
                 ["audience 'ftp://x.example'"], id="audience-ftp"),
    pytest.param(ROUTE + 'credential = { id_token = { audiance = "https://x.example" } }\n', 4,
                 ["route 'rt'", "id_token takes"], id="id-token-typo"),
    pytest.param(ROUTE + 'credential = { key_file = "" }\n', 4, ["route 'rt'", "key_file must be a file path"],
                 id="key-file-empty"),
    pytest.param(ROUTE + 'paths = ["storage/v1"]\n', 4, ["route 'rt'", "path 'storage/v1' must start with /"],
                 id="path-without-slash"),
    pytest.param('route = { hosts = ["a.com"] }\n', 1, ["key route", "[[route]] table"], id="route-not-array"),
]


@pytest.mark.parametrize("text, line, needles", BAD)
def test_bad_input_is_one_sentence_naming_file_line_and_key(tmp_path, text, line, needles):
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        read_policy_file(path)
    message = str(caught.value)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where), message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(PolicyError, match=r"missing\.toml: cannot read the config file \(No such file"):
        read_policy_file(tmp_path / "missing.toml")
    (tmp_path / "latin1.toml").write_bytes(b'default = "caf\xe9"\n')
    with pytest.raises(PolicyError, match="is not UTF-8 text"):
        read_policy_file(tmp_path / "latin1.toml")
    with pytest.raises(PolicyError, match="not valid TOML"):
        read_policy_file(write(tmp_path, "[[rule]\n"))


# -- key files ---------------------------------------------------------------------------------------------

def key_route(path: str) -> str:
    return f'default = "allow"\n\n[[route]]\nname = "k"\nhosts = ["storage.googleapis.com"]\ncredential = {{ key_file = "{path}" }}\n'


@pytest.mark.parametrize("make, needle", [
    (lambda d: d / "missing.json", "does not exist"),
    (lambda d: d, "is a directory"),
    (lambda d: (d / "plain").write_text("x") and d / "plain" / "sa.json", "cannot be read: Not a directory."),
    (lambda d: (d / "text.json").write_text("not json") and d / "text.json", "is not JSON"),
    (lambda d: (d / "list.json").write_text("[1, 2]") and d / "list.json", "not a Google credential file"),
    (lambda d: (d / "other.json").write_text(json.dumps({"type": "api_key", "key": "x"})) and d / "other.json",
     "not a Google credential file (type 'api_key'"),
    (lambda d: (d / "half.json").write_text(json.dumps({"type": "service_account", "client_email": "a@b.c"}))
     and d / "half.json", "lacks private_key, token_uri"),
])
def test_bad_key_files(tmp_path, make, needle):
    keys = tmp_path / "keys"
    keys.mkdir()
    key = make(keys)
    path = write(tmp_path, key_route(str(key)))
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, key_route(str(key)))
    message = str(caught.value)
    assert message.startswith((f"{path}:3: route 'k': The key file {key}",
                               f"{path}:3: route 'k': The service account key file {key}")), message
    assert needle in message and "\n" not in message
    # --config-time checks can be turned off (policy explain on another machine), and then it loads
    assert build_policy(read_policy_file(path), check_key_files=False).routes[0].credential.key_file == str(key)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_key_file(tmp_path, key_file):
    key_file.chmod(0)
    with pytest.raises(PolicyError, match=rf":3: route 'k': The key file {key_file} cannot be read: permission denied"):
        load(tmp_path, key_route(str(key_file)))


def test_key_file_message_never_shows_the_key(tmp_path, key_file):
    info = json.loads(key_file.read_text())
    info["private_key"] = info["private_key"].replace("A", "B", 40)  # a broken key google-auth rejects
    key_file.write_text(json.dumps(info))
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, key_route(str(key_file)))
    assert "PRIVATE KEY" not in str(caught.value) and info["private_key"][40:80] not in str(caught.value)
    assert str(caught.value).startswith(f"{tmp_path / 'policy.toml'}:3: route 'k': The key file {key_file}")


# -- proxy users --------------------------------------------------------------------------------------------

USER_ROUTE = '[[route]]\nname = "alice-route"\nhosts = ["*.googleapis.com"]\nproxy_users = ["alice"]\n'
USER_RULE = '[[rule]]\nname = "bob-rule"\naction = "allow"\nproxy_users = ["alice", "bob"]\n'


@pytest.mark.parametrize("text, users, needles", [
    (USER_ROUTE, None, ["route 'alice-route' names proxy_users, but --proxy-auth is not set"]),
    ("\n" + USER_RULE, None, ["rule 'bob-rule' names proxy_users, but --proxy-auth is not set"]),
    (USER_ROUTE, {"bob"}, ["route 'alice-route' names proxy user 'alice', who is not in --proxy-auth"]),
    ("\n" + USER_RULE, {"alice", "carol"}, ["rule 'bob-rule' names proxy user 'bob', who is not in --proxy-auth"]),
])
def test_proxy_users_must_exist(tmp_path, text, users, needles):
    path = write(tmp_path, text)
    line = 2 if text.startswith("\n") else 1
    with pytest.raises(PolicyError) as caught:
        build_policy(read_policy_file(path), proxy_users=users)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    for needle in needles:
        assert needle in str(caught.value)


def test_known_users_pass_and_unlistable_users_are_not_checked(tmp_path):
    sections = read_policy_file(write(tmp_path, USER_ROUTE + "\n" + USER_RULE))
    assert build_policy(sections, proxy_users={"alice", "bob"}).routes[0].proxy_users == frozenset({"alice"})
    assert build_policy(sections, proxy_users=set()).rules[0].proxy_users == frozenset({"alice", "bob"})


# -- warnings -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, warnings", [
    pytest.param('[[rule]]\nname = "all"\naction = "allow"\n\n[[rule]]\nname = "never"\naction = "deny"\n'
                 'methods = ["DELETE"]\n', [(5, "rule 'never' can never match: rule 'all' (FILE:1)")], id="catch-all"),
    pytest.param('[[rule]]\nname = "wild"\naction = "deny"\nhosts = ["*.googleapis.com"]\n\n'
                 '[[rule]]\nname = "exact"\naction = "allow"\nhosts = ["storage.googleapis.com"]\n'
                 'api_methods = ["storage.objects.get"]\n',
                 [(6, "rule 'exact' can never match: rule 'wild' (FILE:1)")], id="wildcard-covers-exact"),
    pytest.param('[[rule]]\nname = "get"\naction = "allow"\nmethods = ["GET", "HEAD"]\n'
                 'resources = ["projects/_/buckets/logs/objects/a"]\n\n'
                 '[[rule]]\nname = "get-again"\naction = "deny"\nmethods = ["get"]\n'
                 'resources = ["projects/_/buckets/logs/objects/a"]\n',
                 [(7, "rule 'get-again' can never match: rule 'get'")], id="same-resource-fewer-methods"),
    pytest.param('[[rule]]\nname = "exact"\naction = "deny"\nhosts = ["storage.googleapis.com"]\n\n'
                 '[[rule]]\nname = "wild"\naction = "allow"\nhosts = ["*.googleapis.com"]\n', [],
                 id="narrow-first-no-warning"),
    pytest.param('[[rule]]\nname = "get"\naction = "deny"\nmethods = ["GET"]\n\n'
                 '[[rule]]\nname = "all"\naction = "allow"\n', [], id="method-rule-then-catch-all"),
    pytest.param('[[rule]]\nname = "get"\naction = "deny"\nmethods = ["GET"]\n\n'
                 '[[rule]]\nname = "del"\naction = "allow"\nmethods = ["DELETE"]\n', [], id="other-methods"),
    pytest.param('[[rule]]\nname = "one"\naction = "allow"\nresources = ["*"]\n\n'
                 '[[rule]]\nname = "deep"\naction = "deny"\nresources = ["**"]\n', [], id="star-does-not-cover-globstar"),
    pytest.param('[[rule]]\nname = "any-port"\naction = "allow"\nhosts = ["pypi.org"]\n\n'
                 '[[rule]]\nname = "ssh"\naction = "deny"\nhosts = ["pypi.org"]\nports = [22]\n',
                 [(6, "rule 'ssh' can never match: rule 'any-port'")], id="any-port-covers-a-port"),
    pytest.param('[[rule]]\nname = "https"\naction = "allow"\nhosts = ["pypi.org"]\nports = [443]\n\n'
                 '[[rule]]\nname = "rest"\naction = "deny"\nhosts = ["pypi.org"]\n', [], id="a-port-then-any-port"),
    pytest.param('[[rule]]\nname = "alice"\naction = "allow"\nproxy_users = ["alice"]\n\n'
                 '[[rule]]\nname = "everyone"\naction = "deny"\n', [], id="user-rule-then-everyone"),
    pytest.param('[[route]]\nname = "first"\nhosts = ["storage.googleapis.com"]\n\n'
                 '[[route]]\nname = "second"\nhosts = ["STORAGE.googleapis.com"]\ncredential = "none"\n',
                 [(5, "route 'second' is never used: route 'first' (FILE:1) has the same hosts")], id="duplicate-route"),
    pytest.param('[[route]]\nname = "first"\nhosts = ["storage.googleapis.com"]\n\n'
                 '[[route]]\nname = "second"\nhosts = ["storage.googleapis.com"]\npaths = ["/storage"]\n', [],
                 id="same-host-other-paths"),
])
def test_warnings(tmp_path, text, warnings):
    path = write(tmp_path, text)
    policy = build_policy(read_policy_file(path), proxy_users=set())
    assert len(policy.warnings) == len(warnings), policy.warnings
    for got, (line, needle) in zip(policy.warnings, warnings, strict=True):
        assert got.startswith(f"{path}:{line}: "), got
        assert needle.replace("FILE", str(path)) in got, got


def test_a_file_route_standing_in_for_a_shorthand_route_is_not_a_warning(tmp_path):
    """The file's route wins at equal specificity (file order first): that is how a config file
    overrides the default --inject-host, so it is not reported as a mistake."""
    path = write(tmp_path, '[[route]]\nname = "file"\nhosts = ["storage.googleapis.com"]\ncredential = "none"\n')
    policy = build_policy(read_policy_file(path), inject_host=["storage.googleapis.com"])
    assert policy.warnings == ()
    assert policy.route_for("storage.googleapis.com").name == "file"


# -- shorthand flags ----------------------------------------------------------------------------------------

def test_inject_host_makes_adc_routes():
    policy = build_policy(None, inject_host=["*.googleapis.com", "Storage.googleapis.com"])
    assert [(r.name, r.hosts, r.credential, r.origin) for r in policy.routes] == [
        ("--inject-host *.googleapis.com", (parse_host_pattern("*.googleapis.com"),), ADC, "--inject-host"),
        ("--inject-host Storage.googleapis.com", (parse_host_pattern("storage.googleapis.com"),), ADC, "--inject-host"),
    ]
    assert policy.default == "allow" and policy.rules == ()


def test_inject_host_with_impersonation_makes_impersonation_routes():
    policy = build_policy(None, inject_host=["*.googleapis.com"], impersonate=f"{DELEGATE},{WRITER}")
    assert [r.credential for r in policy.routes] == [Credential("impersonate", chain=(DELEGATE, WRITER))]
    assert policy.routes[0].credential.label == "impersonated"


def test_id_token_host_makes_id_token_routes():
    policy = build_policy(None, id_token_host=["*.run.app", f"app.example.com={CLIENT_ID}",
                                               "fn.example.com=https://fn.example.com/x"])
    assert [(str(r.hosts[0]), r.credential) for r in policy.routes] == [
        ("*.run.app", Credential("id_token")),
        ("app.example.com", Credential("id_token", audience=CLIENT_ID)),
        ("fn.example.com", Credential("id_token", audience="https://fn.example.com/x")),
    ]
    assert all(r.origin == "--id-token-host" for r in policy.routes)
    impersonated = build_policy(None, id_token_host=["*.run.app"], impersonate=WRITER)
    assert impersonated.routes[0].credential == Credential("id_token", chain=(WRITER,))


def test_shorthand_routes_come_after_file_routes_id_tokens_first(tmp_path):
    path = write(tmp_path, '[[route]]\nname = "file"\nhosts = ["*.googleapis.com"]\ncredential = "none"\n')
    policy = build_policy(read_policy_file(path), inject_host=["*.googleapis.com", "x.example.com"],
                          id_token_host=["*.run.app"])
    assert [r.name for r in policy.routes] == ["file", "--id-token-host *.run.app", "--inject-host *.googleapis.com",
                                               "--inject-host x.example.com"]
    assert policy.route_for("storage.googleapis.com") is policy.routes[0]  # the tie goes to the file
    assert [str(p) for p in policy.intercepted] == ["*.run.app", "*.googleapis.com", "x.example.com"]


@pytest.mark.parametrize("file_default, flag, expected", [
    (None, False, "allow"),
    ('default = "allow"\n', False, "allow"),
    ('default = "deny"\n', False, "deny"),
    ('default = "allow"\n', True, "deny"),
    (None, True, "deny"),
])
def test_default_deny_overrides_the_file(tmp_path, file_default, flag, expected):
    sections = read_policy_file(write(tmp_path, file_default)) if file_default else None
    assert build_policy(sections, default_deny=flag).default == expected


@pytest.mark.parametrize("flags, start, needle", [
    ({"inject_host": ["bad..host"]}, "--inject-host: ", "invalid host pattern 'bad..host'"),
    ({"id_token_host": ["*.run.app=not a url"]}, "--id-token-host *.run.app=not a url: ", "neither an http(s) URL"),
    ({"id_token_host": ["*.run.app="]}, "--id-token-host *.run.app=: ", "neither an http(s) URL"),
    ({"id_token_host": ["https://x.run.app"]}, "--id-token-host https://x.run.app: ", "invalid host pattern"),
    ({"impersonate": f"{WRITER},{WRITER}"}, "--impersonate-service-account: ", "loops"),
    ({"impersonate": "writer"}, "--impersonate-service-account: ", "not a service account email"),
])
def test_bad_shorthand_flags(flags, start, needle):
    with pytest.raises(PolicyError) as caught:
        build_policy(None, **flags)
    assert str(caught.value).startswith(start) and needle in str(caught.value)
    assert "\n" not in str(caught.value)


# -- through the CLI's config loader ------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, needle", [
    ('inject_host = ["*.googleapis.com"]\n\n[[rule]]\nname = "r"\nactoin = "allow"\n', 5,
     "unknown key actoin in [[rule]]: did you mean action?"),
    ('[[rule]]\nname = "r"\naction = "allow"\nhosts = ["-bad-.com"]\n', 4, "key hosts: invalid host pattern"),
    ('default = "maybe"\n', 1, "key default"),
    ('[[route]]\nhosts = ["a.example.com"]\ncredential = { impersonate = 5 }\n', 3, "impersonate must be"),
    ('[[route]]\nhosts = ["a.example.com"]\ncredential = { key_file = "/nonexistent/sa.json" }\n', 1,
     "The key file /nonexistent/sa.json does not exist"),
    ('[[route]]\nname = "u"\nhosts = ["a.example.com"]\nproxy_users = ["alice"]\n', 1,
     "names proxy_users, but --proxy-auth is not set"),
    ('proxy_auth = "alice:secret"\n[[route]]\nname = "u"\nhosts = ["a.example.com"]\nproxy_users = ["bob"]\n', 2,
     "names proxy user 'bob', who is not in --proxy-auth"),
])
def test_config_loader_reports_policy_errors(tmp_path, capsys, text, line, needle):
    path = write(tmp_path, text)
    with pytest.raises(ProxyError) as caught:
        settings.from_sources({"config": str(path)}, environ={})
    assert caught.value.status == ExitStatus.USAGE == 64
    assert str(caught.value).startswith(f"{path}:{line}: ") and needle in str(caught.value), str(caught.value)
    code = cli.main(["env", "--config", str(path), "--confdir", str(tmp_path / "confdir")])
    err = capsys.readouterr().err
    assert code == 64
    assert err == f"gcp-auth-proxy: {caught.value}\n"


def test_config_loader_checks_htpasswd_users(tmp_path):
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("alice:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\nbob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=\n")
    ok = write(tmp_path, '[[route]]\nname = "b"\nhosts = ["a.example.com"]\nproxy_users = ["bob"]\n', "ok.toml")
    s = settings.from_sources({"config": str(ok), "proxy_auth": f"@{htpasswd}"}, environ={})
    assert policy_from_options(s).routes[0].proxy_users == frozenset({"bob"})
    bad = write(tmp_path, '[[route]]\nname = "c"\nhosts = ["a.example.com"]\nproxy_users = ["carol"]\n', "bad.toml")
    with pytest.raises(ProxyError, match=rf"^{bad}:1: route 'c' names proxy user 'carol', who is not in --proxy-auth"):
        settings.from_sources({"config": str(bad), "proxy_auth": f"@{htpasswd}"}, environ={})


def test_config_loader_accepts_a_valid_policy_with_flags(tmp_path, key_file):
    path = write(tmp_path, VALID.replace("KEY", str(key_file)).replace('proxy_users = ["alice"]\n', "")
                 .replace('proxy_users = "alice"\n', ""))
    s = settings.from_sources({"config": str(path), "id_token_host": ["*.run.app"], "default_deny": False}, environ={})
    policy = policy_from_options(s)
    assert policy.default == "deny"
    assert policy.routes[-len(s.inject_host) - 1].name == "--id-token-host *.run.app"
    assert [r.name for r in policy.routes[:3]] == ["adc", "explicit-adc", "passthrough"]
