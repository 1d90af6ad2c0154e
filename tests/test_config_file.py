"""The --config TOML file: precedence under flags and environment, errors naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from proxy import cli, config_file, settings
from proxy.errors import ProxyError
from tests.conftest import ProxyFactory
from tests.test_security_e2e import ECHO, curl, status_of


def write(tmp_path: Path, text: str, name: str = "proxy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


# option, file line, environment value, flag value (None: not given), expected setting
PRECEDENCE = [
    # a list
    ("allow_host", 'allow_host = ["file.example.test"]', None, None, ("file.example.test",)),
    ("allow_host", 'allow_host = ["file.example.test"]', "env.example.test", None, ("env.example.test",)),
    ("allow_host", 'allow_host = ["file.example.test"]', "env.example.test", ["flag.example.test"],
     ("flag.example.test",)),
    ("allow_host", 'allow_host = ["file.example.test"]', None, ["flag.example.test"], ("flag.example.test",)),
    ("allow_host", None, None, None, ()),
    # a bool (a flag can only turn it on)
    ("allow_metadata", "allow_metadata = true", None, None, True),
    ("allow_metadata", "allow_metadata = true", "false", None, False),
    ("allow_metadata", "allow_metadata = false", "false", True, True),
    ("allow_metadata", "allow_metadata = false", None, None, False),
    ("allow_metadata", None, None, None, False),
    # a number, as a TOML integer or a size string
    ("max_header_size", 'max_header_size = "8k"', None, None, 8192),
    ("max_header_size", "max_header_size = 1000", None, None, 1000),
    ("max_header_size", 'max_header_size = "8k"', "16k", None, 16384),
    ("max_header_size", 'max_header_size = "8k"', "16k", "32k", 32768),
    ("max_header_size", 'max_header_size = "8k"', None, "32k", 32768),
    ("max_header_size", None, None, None, 64 * 1024),
]


@pytest.mark.parametrize("name, line, env, flag, expected", PRECEDENCE)
@pytest.mark.parametrize("named_by", ["flag", "environment"])
def test_flags_beat_environment_beat_file_beat_defaults(tmp_path, name, line, env, flag, expected, named_by):
    path = write(tmp_path, f"# comment\n{line or ''}\n")
    environ = {settings.env_name(name): env} if env is not None else {}
    flags = {name: flag} if flag is not None else {}
    if named_by == "flag":
        flags["config"] = str(path)
    else:
        environ["GCP_AUTH_PROXY_CONFIG"] = str(path)
    s = settings.from_sources(flags, environ=environ)
    assert getattr(s, name) == expected
    assert s.config == path


def test_file_values_take_the_shapes_flags_take(tmp_path):
    path = write(tmp_path, """
inject_host = "storage.googleapis.com"   # one string is a one-element list
scopes = ["https://www.googleapis.com/auth/devstorage.read_only"]
client_auth = "reject"
header_timeout = 2.5
idle_timeout = "90"
max_connections = 10
listen = "127.0.0.1:9100"
""")
    assert config_file.load_config(path) == {
        "inject_host": ["storage.googleapis.com"],
        "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"],
        "client_auth": "reject",
        "header_timeout": "2.5",
        "idle_timeout": "90",
        "max_connections": "10",
        "listen": "127.0.0.1:9100",
    }
    s = settings.from_sources({"config": str(path)}, environ={})
    assert s.inject_host == ("storage.googleapis.com",)
    assert (s.client_auth, s.header_timeout, s.idle_timeout, s.max_connections) == ("reject", 2.5, 90.0, 10)
    assert s.listen_port == 9100


def test_a_bad_file_value_that_a_flag_overrides_is_not_used(tmp_path):
    path = write(tmp_path, 'client_auth = "sometimes"\n')
    assert settings.from_sources({"config": str(path), "client_auth": "replace"}, environ={}).client_auth == "replace"
    with pytest.raises(ProxyError, match="key client_auth"):
        settings.from_sources({"config": str(path)}, environ={})


def test_a_bad_flag_is_still_reported_as_the_flag(tmp_path):
    path = write(tmp_path, 'allow_host = ["storage.googleapis.com"]\n')
    with pytest.raises(ProxyError) as info:
        settings.from_sources({"config": str(path), "inject_host": ["*"]}, environ={})
    assert str(info.value).startswith("--inject-host: ")


# file text, what the one-line error must contain (besides the file's path)
ERRORS = [
    ('listen = "127.0.0.1:0"\ninject_hosts = ["storage.googleapis.com"]\n',
     [":2: ", "unknown key inject_hosts", "did you mean inject_host?"]),
    ('inject-host = ["storage.googleapis.com"]\n', [":1: ", "unknown key inject-host", "did you mean inject_host?"]),
    ("\nfrobnicate = 1\n", [":2: ", "unknown key frobnicate", "option names"]),
    ('\n\nconfig = "other.toml"\n', [":3: ", "key config", "cannot name another"]),
    ("isolate = true\n", [":1: ", "key isolate", "`run`", "command line"]),
    ('placeholder_tokens = ["x"]\n', [":1: ", "key placeholder_tokens", "not a setting"]),
    ("# list\ninject_host = 3\n", [":2: ", "key inject_host", "array of strings", "an integer (3)"]),
    ('inject_host = ["a.example.test", 3]\n', [":1: ", "key inject_host", "array holding an integer (3)"]),
    ('"inject_host" = {a = 1}\n', [":1: ", "key inject_host", "array of strings", "a table"]),
    ("[inject_host]\na = 1\n", [":1: ", "key inject_host", "a table"]),
    ('allow_metadata = "yes"\n', [":1: ", "key allow_metadata", "true or false", "a string ('yes')"]),
    ("max_connections = true\n", [":1: ", "key max_connections", "a number", "a boolean (true)"]),
    ("client_auth = 1\n", [":1: ", "key client_auth", "expected a string"]),
    ("read_timeout = 1979-05-27\n", [":1: ", "key read_timeout", "a date or time"]),
    ('inject_host = ["storage.googleapis.com"\n', [":1:", "not valid TOML"]),
    ('listen = "127.0.0.1:0"\nlisten = "127.0.0.1:1"\n', [":2:", "not valid TOML"]),
    # values that pass the type check reach validate(), which names the file, line and key
    ('\ninject_host = ["*"]\n', [":2: key inject_host: ", "pattern"]),
    ('allow_host = ["*.googleapis.com", "*.*.example.test"]\n', [":1: key allow_host: "]),
    ('resolve = ["storage.googleapis.com"]\n', [":1: key resolve: "]),
    ('client_auth = "sometimes"\n', [":1: key client_auth: must be one of keep, replace, reject"]),
    ('max_header_size = "lots"\n', [":1: key max_header_size: 'lots' is not a whole number"]),
    ("idle_timeout = 0\n", [":1: key idle_timeout: must be at least 1 second"]),
    ("header_timeout = -1\n", [":1: key header_timeout: "]),
    ('listen = "0.0.0.0:8080"\n', [":1: key listen: refusing to listen", "--proxy-auth"]),
    ('upstream_proxy_bypass = ["*"]\nupstream_proxy = "http://127.0.0.1:3128"\n', [":1: key upstream_proxy_bypass: "]),
    ('upstream_ca = "/nonexistent/ca.pem"\n', [":1: key upstream_ca: /nonexistent/ca.pem is not a readable file"]),
]


@pytest.mark.parametrize("text, needles", ERRORS, ids=[t.split("\n")[0][:40] or t[:40] for t, _ in ERRORS])
def test_file_errors_are_one_sentence_naming_file_line_and_key(tmp_path, capsys, text, needles):
    path = write(tmp_path, text)
    code = cli.main(["env", "--config", str(path), "--confdir", str(tmp_path / "confdir")])
    err = capsys.readouterr().err
    assert code == 64
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gcp-auth-proxy: {path}:")
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("name, needle", [
    ("missing.toml", "cannot read the config file (No such file or directory)"),
    (".", "cannot read the config file (Is a directory)"),
    ("latin1.toml", "the config file is not UTF-8 text"),
])
def test_unreadable_file_is_one_sentence_naming_it(tmp_path, capsys, name, needle):
    (tmp_path / "latin1.toml").write_bytes(b'log_file = "caf\xe9"\n')
    path = tmp_path / name
    code = cli.main(["env", "--config", str(path), "--confdir", str(tmp_path / "confdir")])
    assert code == 64
    assert capsys.readouterr().err == f"gcp-auth-proxy: {path}: {needle}\n"


def test_file_named_by_environment_variable_errors_the_same_way(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, 'client_auth = "sometimes"\n')
    monkeypatch.setenv("GCP_AUTH_PROXY_CONFIG", str(path))
    assert cli.main(["env", "--confdir", str(tmp_path / "confdir")]) == 64
    err = capsys.readouterr().err
    assert err.startswith(f"gcp-auth-proxy: {path}:1: key client_auth: must be one of")
    assert err.count("\n") == 1


def test_serve_takes_allow_host_and_client_auth_from_the_file(tmp_path, proxy_factory: ProxyFactory,
                                                              fake: FakeGoogle):
    path = write(tmp_path, 'allow_host = ["storage.googleapis.com"]\nclient_auth = "reject"\n', "serve.toml")
    pp = proxy_factory("--config", str(path))
    pp.wait_for_line("token available")
    assert status_of(curl(pp, ECHO)) == 200
    assert status_of(curl(pp, "http://www.example.test/")) == 403  # not in allow_host
    assert status_of(curl(pp, ECHO, "-H", "Authorization: Bearer the-clients-own")) == 403  # reject
    assert len([q for q in fake.requests if q.path == "/echo"]) == 1


def test_readme_example_is_a_valid_config(tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text("utf-8")
    example = readme.split("### Config file", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    s = settings.from_sources({"config": str(write(tmp_path, example))}, environ={})
    assert s.client_auth == "replace" and s.max_header_size == 64 * 1024 and s.read_timeout == 120
