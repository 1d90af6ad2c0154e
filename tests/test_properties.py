"""Hypothesis properties: host matching, option parsing, redaction, metadata address spellings."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from addons import hosts, redact
from addons.metadata import Pinned, Refusal, is_metadata_host, parse_ip, pin_address
from addons.resolve import parse_resolve_rule, resolve
from proxy import cli
from proxy import settings as settings_mod
from proxy.errors import ProxyError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,14}[a-z0-9])?\Z")
suffix = st.lists(label, min_size=2, max_size=4).map(".".join)
prefix_labels = st.lists(label, min_size=1, max_size=3).map(".".join)


def spellings(host: str) -> st.SearchStrategy[str]:
    """The same name as a client might write it: any case, maybe a trailing dot."""
    return st.tuples(st.lists(st.booleans(), min_size=len(host), max_size=len(host)), st.booleans()).map(
        lambda t: "".join(c.upper() if up else c for c, up in zip(host, t[0], strict=True)) + ("." if t[1] else ""))


# -- host matching ----------------------------------------------------------------------------------


@FAST
@given(suffix, prefix_labels, st.data())
def test_every_label_suffix_matches_wildcard(sfx: str, prefix: str, data: st.DataObject):
    pattern = hosts.parse_host_pattern(f"*.{sfx}")
    host = data.draw(spellings(f"{prefix}.{sfx}"))
    assert hosts.matches_host(host, pattern)


@FAST
@given(suffix, label, label)
def test_no_lookalike_matches(sfx: str, a: str, b: str):
    wildcard = hosts.parse_host_pattern(f"*.{sfx}")
    exact = hosts.parse_host_pattern(sfx)
    lookalikes = [
        sfx,  # the bare suffix is not *.suffix
        f"{a}{sfx}",  # glued on, no label boundary: evilgoogleapis.com
        f"{a}.{sfx}.{b}",  # suffix in the middle: storage.googleapis.com.evil.net
        f"{sfx}.{b}",
        f"{a}.{sfx}{b}",
        f"{a}-{sfx}",
        f"{a}.{sfx[1:]}" if len(sfx) > 1 else f"{a}.x{sfx}",
        f"{a}.{sfx}..",
        f"{a}_{sfx}",
    ]
    want = sfx.split(".")
    for host in lookalikes:
        labels = host.split(".")
        if labels[-len(want):] == want and len(labels) > len(want) and all(labels):
            continue  # by chance a real subdomain (0.0.0.0 under *.0.0): not a look-alike
        assert not hosts.matches_host(host, wildcard), host
        if hosts.normalize_host(host) != sfx:
            assert not hosts.matches_host(host, exact), host
    assert hosts.matches_host(sfx, exact)


@FAST
@given(suffix, st.one_of(prefix_labels.map(lambda p: p + "."), st.just(""), label), st.data(),
       st.integers(1, 65535))
def test_interception_regex_agrees_with_injection(sfx: str, prefix: str, data: st.DataObject, port: int):
    """mitmproxy intercepts TLS by allow_hosts regex; we inject by matches_host: they must agree."""
    pattern = hosts.parse_host_pattern(f"*.{sfx}")
    host = data.draw(st.sampled_from([prefix + sfx, prefix + "x" + sfx, sfx + ".evil", prefix.rstrip(".")]))
    assume(host)
    regex = re.compile(hosts.allow_hosts_regex(pattern))
    assert bool(regex.search(f"{host}:{port}")) == hosts.matches_host(host, pattern)


@FAST
@given(st.text(max_size=80))
def test_host_pattern_parser_raises_only_value_error(text: str):
    try:
        pattern = hosts.parse_host_pattern(text)
    except ValueError as e:
        assert str(e)
    else:
        assert hosts.matches_host(pattern.suffix if not pattern.wildcard else "a." + pattern.suffix, pattern)


# -- --resolve and option parsing ----------------------------------------------------------------------


@FAST
@given(st.text(max_size=80))
def test_resolve_rule_parser_raises_only_value_error(text: str):
    try:
        rule = parse_resolve_rule(text)
    except ValueError as e:
        assert "resolve rule" in str(e) or "host pattern" in str(e)
    else:
        name = rule.pattern.suffix if not rule.pattern.wildcard else "x." + rule.pattern.suffix
        assert resolve([rule], name, 443) == (rule.address, rule.port or 443)


@FAST
@given(suffix, st.integers(1, 65535), st.integers(1, 65535))
def test_resolve_keeps_port_unless_given(sfx: str, port: int, request_port: int):
    with_port = parse_resolve_rule(f"*.{sfx}=127.0.0.1:{port}")
    without = parse_resolve_rule(f"*.{sfx}=127.0.0.1")
    assert resolve([with_port], f"a.{sfx}", request_port) == ("127.0.0.1", port)
    assert resolve([without], f"a.{sfx}", request_port) == ("127.0.0.1", request_port)
    assert resolve([with_port], sfx, request_port) is None


OPTION_NAMES = ["listen", "proxy_auth", "inject_host", "scopes", "resolve", "client_auth", "log_format",
                "allow_host", "max_connections", "max_header_size", "header_timeout", "idle_timeout",
                "connect_timeout", "read_timeout", "shutdown_grace"]
LIST_OPTIONS = {"inject_host", "scopes", "resolve", "allow_host"}
hostile_text = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", ":", "0.0.0.0:0", "[::]:1", "1e999", "nan", "-0", "64k", "9" * 30, "*.", "*", "a=b", "=", "@/nonexistent",
     "u:", ":p", "\x00", "../../etc/passwd", "keep", "json", "[::1]:99999"]))


@FAST
@given(st.dictionaries(st.sampled_from(OPTION_NAMES), hostile_text, max_size=5))
def test_validate_gives_settings_or_one_proxy_error(values: dict[str, str]):
    raw = {k: ([v] if k in LIST_OPTIONS else v) for k, v in values.items()}
    try:
        s = settings_mod.validate(raw)
    except ProxyError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
    else:
        assert 0 <= s.listen_port <= 65535
        assert s.max_connections >= 0 and s.idle_timeout >= 1


FLAGS = ["--listen", "--proxy-auth", "--inject-host", "--scopes", "--resolve", "--client-auth", "--log-format",
         "--allow-host", "--max-header-size", "--header-timeout", "--idle-timeout", "--connect-timeout",
         "--read-timeout", "--shutdown-grace", "--upstream-ca"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(FLAGS), hostile_text), max_size=4))
def test_cli_bad_input_is_one_clear_error_exit_64(capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory,
                                                  args: list[tuple[str, str]]):
    argv = ["serve", "--confdir", str(tmp_path_factory.getbasetemp() / "cli-fuzz")]
    for flag, value in args:
        argv += [f"{flag}={value}"]
    argv += ["--max-connections", "not-a-number"]  # guarantees the command never starts serving
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 64
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(("gcp-auth-proxy:", "gcp-auth-proxy serve: error:")), err


# -- redaction -------------------------------------------------------------------------------------------


secret_value = st.from_regex(r"\A[A-Za-z0-9_\-]{12,40}\Z")
plain_value = st.from_regex(r"\A[A-Za-z0-9_\-.%]{0,12}\Z")
other_name = st.from_regex(r"\A[a-z][a-z0-9_]{0,10}\Z").filter(lambda n: n not in redact.SECRET_PARAMS)


@st.composite
def secret_param(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(redact.SECRET_PARAMS)))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    if draw(st.booleans()):
        name = quote(name, safe="") if draw(st.booleans()) else "".join(f"%{ord(c):02X}" for c in name)
    return name


@FAST
@given(st.data(), secret_value)
def test_no_secret_survives_any_url_shape(data: st.DataObject, secret: str):
    others = data.draw(st.lists(st.tuples(other_name, plain_value), max_size=4))
    params = [f"{n}={v}" for n, v in others]
    params.insert(data.draw(st.integers(0, len(params))), f"{data.draw(secret_param())}={secret}")
    query = "&".join(params)
    path = "/" + "/".join(data.draw(st.lists(st.from_regex(r"\A[a-zA-Z0-9._~-]{1,10}\Z"), max_size=3)))
    assume(all(secret not in part for part in (path, *(f"{n}={v}" for n, v in others))))
    shape = data.draw(st.sampled_from(["origin", "absolute", "userinfo", "fragment"]))
    if shape == "origin":
        url = f"{path}?{query}"
    elif shape == "absolute":
        url = f"https://storage.googleapis.com:443{path}?{query}"
    elif shape == "userinfo":
        url = f"https://user:{secret}@www.example.test{path}?{query}"
    else:
        url = f"https://www.example.test{path}#{query}"
    assert secret not in redact.redact_url(url)


@FAST
@given(st.text(max_size=30), st.from_regex(r"\Aya29\.[A-Za-z0-9_\-]{20,60}\Z"), st.text(max_size=30))
def test_no_access_token_survives_free_text(before: str, token: str, after: str):
    assume(not (after[:1].isalnum() or after[:1] in "_-."))  # the token ends where the text says
    assert token not in redact.redact_text(before + token + after)
    assert token not in redact.redact_text(f"{before}Bearer {token}{after}")


# -- the metadata server's many names -----------------------------------------------------------------------


LINK_LOCAL = ipaddress.ip_network("169.254.0.0/16")


def ipv6_embeddings(ip: ipaddress.IPv4Address) -> dict[str, str]:
    """Every IPv6 spelling that carries ``ip`` (RFC 4291, 2765/6145, 6052, 8215, 3056, 4380, 5214)."""
    n, v4 = int(ip), ip.packed

    def v6(number: int) -> str:
        return str(ipaddress.IPv6Address(number))

    def rfc6052(prefix: str, at: tuple[int, ...]) -> str:
        packed = bytearray(ipaddress.IPv6Address(prefix).packed)
        for i, b in zip(at, v4, strict=True):
            packed[i] = b
        return str(ipaddress.IPv6Address(bytes(packed)))

    return {
        "mapped": f"[::ffff:{ip}]",
        "mapped-hex": v6(0xFFFF << 32 | n),
        "translated": v6(0xFFFF << 48 | n),
        "compatible": f"::{ip}",
        "nat64": f"[64:ff9b::{ip}]",
        "local-nat64/96": rfc6052("64:ff9b:1::", (12, 13, 14, 15)),
        "6to4": v6(0x2002 << 112 | n << 80 | 1),
        "teredo": v6(0x20010000 << 96 | int(ipaddress.IPv4Address("65.54.227.120")) << 64 | 0x8000_63BF << 32
                     | n ^ 0xFFFFFFFF),
        "isatap": v6(0x5EFE << 32 | n),
        "isatap-global": v6(0x20010DB8 << 96 | 0x0200_5EFE << 32 | n),
    }


def local_nat64_embeddings(ip: ipaddress.IPv4Address) -> list[str]:
    """64:ff9b:1::/48 with the shorter RFC 6052 prefixes a network may use inside it (byte 8 is skipped)."""
    out = []
    for at in ((6, 7, 9, 10), (7, 9, 10, 11), (9, 10, 11, 12)):
        packed = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
        for i, b in zip(at, ip.packed, strict=True):
            packed[i] = b
        out.append(str(ipaddress.IPv6Address(bytes(packed))))
    return out


@FAST
@given(st.integers(int(LINK_LOCAL.network_address), int(LINK_LOCAL.broadcast_address)), st.data())
def test_every_spelling_of_link_local_is_metadata(number: int, data: st.DataObject):
    ip = ipaddress.IPv4Address(number)
    a, b, c, d = ip.packed
    spelling = data.draw(st.sampled_from([
        str(ip), str(number), hex(number), f"{a}.{b}.{(c << 8) | d}", f"{a}.{(b << 16) | (c << 8) | d}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}", f"{hex(a)}.{hex(b)}.{hex(c)}.{hex(d)}", f"[::ffff:{ip}]",
        f"[::ffff:{a * 256 + b:x}:{c * 256 + d:x}]", f"[64:ff9b::{ip}]", f"{ip}.",
    ]))
    try:  # sanity: the system resolver agrees this spelling means the address
        socket.inet_aton(spelling)
    except OSError:
        pass
    assert is_metadata_host(spelling), spelling


@FAST
@given(st.integers(int(LINK_LOCAL.network_address), int(LINK_LOCAL.broadcast_address)))
def test_every_ipv6_embedding_of_link_local_is_metadata(number: int):
    ip = ipaddress.IPv4Address(number)
    for kind, spelling in ipv6_embeddings(ip).items():
        assert ipaddress.ip_address(spelling.strip("[]"))  # a real IPv6 address, not a typo
        assert is_metadata_host(spelling), (kind, spelling)
    for spelling in local_nat64_embeddings(ip):
        assert is_metadata_host(spelling), spelling


@FAST
@given(st.ip_addresses(v=4))
def test_other_addresses_are_not_metadata(ip: ipaddress.IPv4Address):
    assume(ip not in LINK_LOCAL)
    assert not is_metadata_host(str(ip))
    assert not is_metadata_host(str(int(ip)))
    for kind, spelling in ipv6_embeddings(ip).items():
        assert not is_metadata_host(spelling), (kind, spelling)
    # Not local_nat64_embeddings: read at another RFC 6052 length, one may look link-local (all are read).


def _resolver_for(answer: list[str] | None):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if answer is None:
            raise OSError("no such host")
        return answer
    return resolve


addresses = st.one_of(st.ip_addresses().map(str), st.sampled_from(["169.254.169.254", "fd20:ce::254", "fe80::1%2"]))


@FAST
@given(st.one_of(st.text(max_size=40), addresses), st.one_of(st.none(), st.lists(addresses, max_size=3)))
def test_pin_address_never_raises_and_never_pins_a_metadata_address(host: str, answer: list[str] | None):
    outcome = asyncio.run(pin_address(host, 443, _resolver_for(answer)))
    if isinstance(outcome, Pinned):
        assert not is_metadata_host(outcome.address) and not is_metadata_host(host)
        assert parse_ip(outcome.address) is not None  # an address, never a name to look up again
        assert answer is not None or parse_ip(host.strip().lower().removesuffix(".")) is not None
    else:
        assert outcome in (Refusal.METADATA, Refusal.UNRESOLVED)
        if outcome is Refusal.UNRESOLVED:
            assert not answer
