"""The CLI in-process: settings from flags and environment, one-sentence errors, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from proxy import cli, settings
from proxy.errors import ExitStatus, ProxyError


def test_defaults():
    s = settings.from_sources({}, environ={})
    assert (s.listen_host, s.listen_port) == ("127.0.0.1", 8080)
    assert s.inject_host == ("*.googleapis.com",)
    assert s.scopes == ("https://www.googleapis.com/auth/cloud-platform",)


def test_environment_fills_what_flags_leave_out_and_flags_win():
    env = {
        "GCP_AUTH_PROXY_LISTEN": "127.0.0.1:9000",
        "GCP_AUTH_PROXY_INJECT_HOST": "*.googleapis.com, storage.example.test",
        "GCP_AUTH_PROXY_RESOLVE": "*.googleapis.com=199.36.153.4:443",
        "GCP_AUTH_PROXY_ALLOW_METADATA": "true",
    }
    s = settings.from_sources({"listen": "127.0.0.1:9001"}, environ=env)
    assert s.listen_port == 9001
    assert s.inject_host == ("*.googleapis.com", "storage.example.test")
    assert s.resolve == ("*.googleapis.com=199.36.153.4:443",)
    assert s.allow_metadata is True


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"listen": "0.0.0.0:8080"}, "without --proxy-auth"),
        ({"listen": "[::]:8080"}, "without --proxy-auth"),
        ({"listen": "127.0.0.1"}, "--listen"),
        ({"listen": "127.0.0.1:99999"}, "--listen"),
        ({"inject_host": ["*"]}, "--inject-host"),
        ({"resolve": ["storage.googleapis.com"]}, "--resolve"),
        ({"upstream_ca": "/nonexistent/ca.pem"}, "--upstream-ca"),
        ({"proxy_auth": "nocolon"}, "--proxy-auth"),
        ({"proxy_auth": "@/nonexistent/htpasswd"}, "--proxy-auth"),
    ],
)
def test_bad_settings_are_one_clear_error(flags, needle):
    with pytest.raises(ProxyError) as info:
        settings.from_sources(flags, environ={})
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_boolean_in_environment():
    with pytest.raises(ProxyError, match="GCP_AUTH_PROXY_ALLOW_METADATA"):
        settings.from_sources({}, environ={"GCP_AUTH_PROXY_ALLOW_METADATA": "maybe"})


def test_non_loopback_with_proxy_auth_is_allowed():
    s = settings.from_sources({"listen": "0.0.0.0:8080", "proxy_auth": "user:secret"}, environ={})
    assert s.listen_host == "0.0.0.0"


def test_cli_refuses_open_proxy_with_one_sentence(capsys):
    code = cli.main(["serve", "--listen", "0.0.0.0:8080"])
    err = capsys.readouterr().err
    assert code == ExitStatus.USAGE
    assert err.count("\n") == 1 and err.startswith("gcp-auth-proxy: refusing to listen on 0.0.0.0:8080")
    assert "Traceback" not in err


def test_unknown_option_is_a_usage_error(capsys):
    assert cli.main(["serve", "--no-such-option"]) == ExitStatus.USAGE
    assert "Traceback" not in capsys.readouterr().err


def test_ca_prints_the_certificate_path_with_private_key_protected(tmp_path: Path, capsys):
    confdir = tmp_path / "conf"
    assert cli.main(["ca", "--confdir", str(confdir)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY" not in path.read_text()
    assert (confdir.stat().st_mode & 0o777) == 0o700
    assert ((confdir / "mitmproxy-ca.pem").stat().st_mode & 0o777) == 0o600


def test_port_in_use_is_one_sentence_and_exit_69(tmp_path: Path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli.main(["serve", "--listen", f"127.0.0.1:{port}", "--confdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == ExitStatus.UNAVAILABLE, err
    assert "cannot start the proxy" in err and "Traceback" not in err


@pytest.mark.parametrize("absent", ["fakegoogle", "trustme", "google.cloud.storage"])
def test_demo_without_the_fake_or_its_extras_is_one_sentence_and_exit_69(absent, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, absent, None)  # how Python marks a module as not importable
    code = cli.main(["demo"])
    err = capsys.readouterr().err
    assert code == ExitStatus.UNAVAILABLE == 69
    assert err.count("\n") == 1 and f"({absent} missing)" in err and "pip install" in err
