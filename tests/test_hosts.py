import re

import pytest

from addons import hosts

GOOGLEAPIS = hosts.parse_host_pattern("*.googleapis.com")


@pytest.mark.parametrize(
    "host, expected",
    [
        ("storage.googleapis.com", True),
        ("STORAGE.GOOGLEAPIS.COM.", True),
        ("a.b.googleapis.com", True),
        ("googleapis.com", False),
        ("evilgoogleapis.com", False),
        ("storage.evilgoogleapis.com", False),
        ("storage.googleapis.com.evil.test", False),
        ("googleapis.com.x", False),
        ("storage.googleapis.co", False),
        (".googleapis.com", False),
        ("", False),
        (None, False),
    ],
)
def test_wildcard_matches_whole_labels_only(host, expected):
    assert hosts.matches_host(host, GOOGLEAPIS) is expected


@pytest.mark.parametrize(
    "host, expected",
    [("storage.googleapis.com", True), ("Storage.Googleapis.Com.", True), ("x.storage.googleapis.com", False)],
)
def test_exact_pattern(host, expected):
    assert hosts.matches_host(host, hosts.parse_host_pattern("storage.googleapis.com")) is expected


@pytest.mark.parametrize(
    "text", ["", "*", "*.", "*.com", "goo gle.com", "a..b", "*.*.googleapis.com", "-a.com", "a-.com", "x" * 64 + ".com"]
)
def test_bad_patterns_raise_value_error(text):
    with pytest.raises(ValueError):
        hosts.parse_host_pattern(text)


@pytest.mark.parametrize(
    "hostport, expected",
    [
        ("storage.googleapis.com:443", True),
        ("storage.googleapis.com.:8443", True),
        ("STORAGE.googleapis.com:443", True),
        ("googleapis.com:443", False),
        ("storage.googleapis.com.evil.test:443", False),
        ("evilgoogleapis.com:443", False),
        ("127.0.0.1:443", False),
    ],
)
def test_allow_hosts_regex_is_anchored(hostport, expected):
    rex = hosts.allow_hosts_regex(GOOGLEAPIS)
    assert bool(re.search(rex, hostport, re.IGNORECASE)) is expected


def test_most_specific_pattern_wins():
    candidates = [
        (hosts.parse_host_pattern("*.googleapis.com"), "vip"),
        (hosts.parse_host_pattern("*.storage.googleapis.com"), "deeper"),
        (hosts.parse_host_pattern("oauth2.googleapis.com"), "exact"),
    ]
    assert hosts.best_match("oauth2.googleapis.com", candidates) == "exact"
    assert hosts.best_match("eu.storage.googleapis.com", candidates) == "deeper"
    assert hosts.best_match("compute.googleapis.com", candidates) == "vip"
    assert hosts.best_match("example.com", candidates) is None
