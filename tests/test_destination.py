"""The one decision about where a request goes and whether a token may travel there (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons import hosts
from addons.destination import Tunnel, decide, split_authority

G = "storage.googleapis.com"


def in_tunnel(sni: str | None, tunnel: str, *authorities: str, port: int = 443, upstream_sni: str | None = None):
    return decide(client_tls=True, client_sni=sni, tunnel=Tunnel(tunnel, port), request_host="127.0.0.1",
                  request_port=port, authorities=authorities, upstream_sni=upstream_sni)


def plain(host: str, *authorities: str, port: int = 80):
    return decide(client_tls=False, client_sni=None, tunnel=None, request_host=host, request_port=port,
                  authorities=authorities)


@pytest.mark.parametrize("authority, expected", [
    ("storage.googleapis.com", (G, None)),
    ("STORAGE.googleapis.com.:443", (G, 443)),
    ("[::1]:8443", ("::1", 8443)),
    ("[::1]", ("::1", None)),
    ("host:99999", ("", None)),
    ("host:abc", ("", None)),
    ("[::1]x", ("", None)),
])
def test_split_authority(authority, expected):
    assert split_authority(authority) == expected


def test_consistent_tunnel_request_may_carry_a_token():
    d = in_tunnel(G, G, G, f"{G}:443", upstream_sni=G)
    assert d.tokenable and d.host == G and d.port == 443


@pytest.mark.parametrize("case", [
    {"sni": "www.evil.test", "tunnel": G, "authorities": (G,)},  # server name differs from target
    {"sni": None, "tunnel": G, "authorities": (G,)},  # no server name at all
    {"sni": G, "tunnel": G, "authorities": ("www.evil.test",)},  # Host differs
    {"sni": G, "tunnel": G, "authorities": (G, "www.evil.test")},  # a second Host / :authority differs
    {"sni": G, "tunnel": G, "authorities": (f"{G}:8443",)},  # another port
    {"sni": G, "tunnel": G, "authorities": ("garbage:x",)},
    {"sni": G, "tunnel": "142.250.1.1", "authorities": (G,)},  # IP-literal target
    {"sni": G, "tunnel": "www.evil.test", "authorities": (G,)},  # Google name, another target
])
def test_confused_tunnel_requests_never_carry_a_token(case):
    d = in_tunnel(case["sni"], case["tunnel"], *case["authorities"])
    assert not d.tokenable and d.reason
    assert d.host == hosts.normalize_host(case["tunnel"]), "policy and audit see the real destination"


def test_upstream_verified_against_another_name_gets_no_token():
    assert not in_tunnel(G, G, G, upstream_sni="www.evil.test").tokenable


def test_tls_to_the_proxy_port_outside_a_tunnel_gets_no_token():
    d = decide(client_tls=True, client_sni=G, tunnel=None, request_host="www.evil.test", request_port=443,
               authorities=("www.evil.test",))
    assert not d.tokenable and d.host == "www.evil.test"


def test_plain_http_inside_a_tunnel_gets_no_token():
    d = decide(client_tls=False, client_sni=None, tunnel=Tunnel(G, 80), request_host="127.0.0.1",
               request_port=80, authorities=(G,))
    assert not d.tokenable and d.host == G


def test_plain_http_may_be_upgraded_only_when_host_and_target_agree():
    assert plain(G, G).tokenable and plain(G, G).plain
    assert not plain(G, "www.evil.test").tokenable
    assert not plain("127.0.0.1", G).tokenable
    assert plain("www.evil.test", G).host == "www.evil.test"


NAMES = st.sampled_from([G, "STORAGE.GOOGLEAPIS.COM.", "www.evil.test", "googleapis.com", "142.250.1.1",
                         "storage.googleapis.com.evil.test", "bucket.storage.googleapis.com", ""])


@given(sni=st.one_of(st.none(), NAMES), tunnel=st.one_of(st.none(), NAMES), host=NAMES,
       authority=st.one_of(st.none(), NAMES), absolute=st.one_of(st.none(), NAMES), tls=st.booleans(),
       port=st.sampled_from([443, 80, 8443]))
def test_a_token_path_always_names_one_host_end_to_end(sni, tunnel, host, authority, absolute, tls, port):
    """For any mix of server name, CONNECT target, Host, :authority and absolute-form target, a
    tokenable destination is the CONNECT target (or the plain URL's host), every name the request
    carries equals it, and on TLS it equals the server name too."""
    authorities = [a for a in (host, authority, absolute) if a is not None]
    d = decide(client_tls=tls, client_sni=sni, tunnel=Tunnel(tunnel, port) if tunnel is not None else None,
               request_host=host, request_port=port, authorities=authorities)
    if not d.tokenable:
        return
    assert d.host and all(split_authority(a)[0] == d.host for a in authorities)
    if tunnel is not None:
        assert tls and d.host == hosts.normalize_host(tunnel) == hosts.normalize_host(sni or "")
    else:
        assert not tls and d.plain
