import pytest

from addons.resolve import parse_resolve_rule, parse_resolve_rules, resolve


@pytest.mark.parametrize(
    "text, address, port",
    [
        ("*.googleapis.com=199.36.153.4:443", "199.36.153.4", 443),
        ("oauth2.googleapis.com=127.0.0.1:8443", "127.0.0.1", 8443),
        ("storage.googleapis.com=[::1]:9000", "::1", 9000),
        ("storage.googleapis.com=private.example.internal", "private.example.internal", None),
        ("storage.googleapis.com=10.0.0.1", "10.0.0.1", None),
    ],
)
def test_parse_good_rules(text, address, port):
    rule = parse_resolve_rule(text)
    assert (rule.address, rule.port) == (address, port)


@pytest.mark.parametrize(
    "text",
    ["", "=", "storage.googleapis.com", "=1.2.3.4:1", "*.googleapis.com=", "*.x=1.2.3.4:0",
     "a.com=1.2.3.4:99999", "a.com=1.2.3.4:http", "a.com=not a host", "a b.com=1.2.3.4:1", "a.com=[::1]x"],
)
def test_parse_bad_rules_raise_one_value_error(text):
    with pytest.raises(ValueError) as info:
        parse_resolve_rule(text)
    assert "resolve rule" in str(info.value) or "host pattern" in str(info.value)


def test_most_specific_rule_wins_and_port_defaults_to_requested():
    rules = parse_resolve_rules(
        ["*.googleapis.com=10.0.0.1:443", "oauth2.googleapis.com=127.0.0.1:9", "*.example.test=127.0.0.2"]
    )
    assert resolve(rules, "storage.googleapis.com", 443) == ("10.0.0.1", 443)
    assert resolve(rules, "OAUTH2.googleapis.com.", 443) == ("127.0.0.1", 9)
    assert resolve(rules, "www.example.test", 8443) == ("127.0.0.2", 8443)
    assert resolve(rules, "googleapis.com", 443) is None
