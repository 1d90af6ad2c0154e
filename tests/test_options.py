"""The option table is the single source: flags, variables, Settings, addon options and README agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from addons import default_addons
from addons.options import BY_NAME, OPTIONS
from proxy import cli, options_doc, settings
from proxy.errors import ProxyError

ROOT = Path(__file__).resolve().parent.parent


def test_readme_option_table_is_up_to_date():
    readme = (ROOT / "README.md").read_text("utf-8")
    assert options_doc.with_table(readme) == readme, "run `make readme-options`"


def test_settings_fields_are_the_option_names():
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    assert fields == {o.name for o in settings.USER_OPTIONS}


def test_every_flag_of_serve_comes_from_the_table():
    parser = cli.build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    dests = {a.dest for a in serve._actions if a.dest != "help"}
    assert dests == {o.name for o in OPTIONS if "serve" in o.commands}


def test_every_addon_option_is_declared_by_exactly_one_addon_under_its_table_name():
    declared: dict[str, int] = {}

    class Loader:
        def add_option(self, name, typespec, default, help, choices=None):
            declared[name] = declared.get(name, 0) + 1

    for addon in default_addons():
        if hasattr(addon, "load"):
            addon.load(Loader())
    addon_options = {o.name for o in OPTIONS if o.addon}
    assert set(declared) == addon_options
    assert all(count == 1 for count in declared.values())


@pytest.mark.parametrize("option", [o for o in settings.USER_OPTIONS], ids=lambda o: o.name)
def test_each_option_has_its_variable(option):
    assert option.env == "GCP_AUTH_PROXY_" + option.name.upper()
    assert option.flag == "--" + option.name.replace("_", "-")
    assert BY_NAME[option.name] is option


def test_unknown_option_name_is_an_error():
    with pytest.raises(ProxyError, match="unknown option"):
        settings.from_sources({"inject_hosts": ["x.example"]}, environ={})


def test_unknown_prefixed_variable_is_an_error_naming_it():
    with pytest.raises(ProxyError, match="GCP_AUTH_PROXY_INJECT_HOSTS"):
        settings.from_sources({}, environ={"GCP_AUTH_PROXY_INJECT_HOSTS": "x.example"})


def test_run_marker_is_not_an_option_but_is_allowed():
    assert settings.from_sources({}, environ={"GCP_AUTH_PROXY_RUN": "127.0.0.1:1"}).listen == "127.0.0.1:8080"


def test_unknown_variable_is_one_sentence_and_exit_64(monkeypatch, capsys):
    monkeypatch.setenv("GCP_AUTH_PROXY_AUDITLOG", "/tmp/x")
    assert cli.main(["env"]) == 64
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GCP_AUTH_PROXY_AUDITLOG" in err and "Traceback" not in err
