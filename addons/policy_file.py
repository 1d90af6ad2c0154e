"""Reads ``[[route]]``, ``[[rule]]`` and ``default`` from the config file and builds the Policy.

The shorthand flags become routes here too (``--inject-host``, ``--id-token-host``,
``--impersonate-service-account``), so the proxy, ``policy check`` and ``policy explain`` all
evaluate the same Policy. Every error is one sentence that starts with ``FILE:LINE`` and names
the table and key; the proxy exits 64 on it at start and keeps its old policy on a reload.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addons import hosts
from addons.hosts import HostPattern
from addons.policy_model import ADC, Action, Credential, Policy, Route, Rule, covers

POLICY_KEYS = ("route", "rule", "default")
_ROUTE_KEYS = {"name", "hosts", "paths", "proxy_users", "credential"}
_RULE_KEYS = {"name", "action", "hosts", "ports", "methods", "api_methods", "resources", "proxy_users"}
_HTTP_METHOD = re.compile(r"^[A-Z][A-Z-]*$")
# tomllib ends its messages with the position; we lead with it instead, as compilers do.
_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


class PolicyError(ValueError):
    """A config file or flag that cannot make a policy; the message is the whole sentence."""


@dataclass(frozen=True)
class FileSections:
    """What the file says about policy (before the shorthand flags join in)."""

    routes: tuple[Route, ...] = ()
    rules: tuple[Rule, ...] = ()
    default: Action | None = None


# -- reading -----------------------------------------------------------------------------------------

def read_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """The config file's data and text; PolicyError (``FILE[:LINE[:COL]]: ...``) when it cannot be read.

    Shared with proxy/config_file.py, which reads the option keys of the same file.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise PolicyError(f"{path}: cannot read the config file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: the config file is not UTF-8 text") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        at = _POSITION.search(message)
        if at and at.group(1):
            where = f"{path}:{at.group(1)}:{at.group(2)}"
        else:  # an unclosed array or string: the file ended first
            where = f"{path}:{max(len(text.splitlines()), 1)}" if at else str(path)
        raise PolicyError(f"{where}: not valid TOML: {_POSITION.sub('', message)}") from None


def read_policy_file(path: str | Path) -> FileSections:
    """The policy sections of a config file (other keys are the option loader's business).

    Raises:
        PolicyError: unreadable file, invalid TOML, or a bad route or rule.
    """
    data, text = read_toml(path)
    return parse_sections(data, text, str(path))


def parse_sections(data: Mapping[str, Any], text: str, path: str) -> FileSections:
    where = _Locator(path, text)
    default = data.get("default")
    if default is not None and default not in ("allow", "deny"):
        raise PolicyError(f"{where.key(None, 0, 'default')}: key default: expected \"allow\" or \"deny\", "
                          f"got {default!r}")
    routes = [_route(entry, i, where) for i, entry in enumerate(_tables(data, "route", where))]
    rules = [_rule(entry, i, where) for i, entry in enumerate(_tables(data, "rule", where))]
    names: dict[str, int] = {}
    for i, rule in enumerate(rules):
        if rule.name in names:
            raise PolicyError(f"{where.key('rule', i, 'name')}: rule {rule.name!r} is named twice "
                              f"(rule names are what a denial reports; make them unique)")
        names[rule.name] = i
    return FileSections(tuple(routes), tuple(rules), default)


def _tables(data: Mapping[str, Any], name: str, where: _Locator) -> list[Mapping[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PolicyError(f"{where.key(None, 0, name)}: key {name}: write each one as a [[{name}]] table")
    return value


def _route(entry: Mapping[str, Any], index: int, where: _Locator) -> Route:
    _no_unknown(entry, _ROUTE_KEYS, "route", index, where)
    name = _string(entry, "name", "route", index, where) or f"route {index + 1}"
    host_list = _strings(entry, "hosts", "route", index, where)
    if not host_list:
        raise PolicyError(f"{where.table('route', index)}: route {name!r} needs hosts = [\"PATTERN\", ...]")
    credential = _credential(entry.get("credential", "adc"), name, index, where)
    paths = _strings(entry, "paths", "route", index, where)
    for p in paths:
        if not p.startswith("/"):
            raise PolicyError(f"{where.key('route', index, 'paths')}: route {name!r}: path {p!r} must "
                              "start with / (a prefix such as /storage/v1/b/logs, or a glob)")
    return Route(
        name=name,
        hosts=_host_patterns(host_list, "route", index, where),
        credential=credential,
        paths=tuple(paths),
        proxy_users=frozenset(_strings(entry, "proxy_users", "route", index, where)),
        origin=where.table("route", index),
    )


def _credential(value: Any, route: str, index: int, where: _Locator) -> Credential:
    at = where.key("route", index, "credential")
    if value == "adc":
        return ADC
    if value == "none":
        return Credential("none")
    if not isinstance(value, dict) or len(value) != 1:
        raise PolicyError(f"{at}: route {route!r}: credential must be \"adc\", \"none\", "
                          "{ impersonate = [..] }, { id_token = { audience = \"..\" } } or { key_file = \"PATH\" }")
    (kind, body), = value.items()
    try:
        if kind == "impersonate":
            return Credential("impersonate", chain=parse_chain(body))
        if kind == "key_file":
            if not isinstance(body, str) or not body:
                raise ValueError("key_file must be a file path")
            return Credential("key_file", key_file=body)
        if kind == "id_token":
            if not isinstance(body, dict) or set(body) - {"audience", "impersonate"}:
                raise ValueError("id_token takes { audience = \"..\", impersonate = [..] } (both optional)")
            audience = body.get("audience")
            if audience is not None:
                audience = check_audience(audience)
            chain = parse_chain(body["impersonate"]) if "impersonate" in body else ()
            return Credential("id_token", chain=chain, audience=audience)
    except ValueError as e:
        raise PolicyError(f"{at}: route {route!r}: {e}") from None
    raise PolicyError(f"{at}: route {route!r}: unknown credential {kind!r} (impersonate, id_token or key_file)")


def _rule(entry: Mapping[str, Any], index: int, where: _Locator) -> Rule:
    _no_unknown(entry, _RULE_KEYS, "rule", index, where)
    name = _string(entry, "name", "rule", index, where)
    if not name:
        raise PolicyError(f"{where.table('rule', index)}: every rule needs a name (a denial reports it)")
    action = entry.get("action")
    if action not in ("allow", "deny"):
        raise PolicyError(f"{where.key('rule', index, 'action')}: rule {name!r}: action must be "
                          f"\"allow\" or \"deny\", got {action!r}")
    methods = [m.upper() for m in _strings(entry, "methods", "rule", index, where)]
    for m in methods:
        if not _HTTP_METHOD.match(m):
            raise PolicyError(f"{where.key('rule', index, 'methods')}: rule {name!r}: {m!r} is not an HTTP method")
    resources = _strings(entry, "resources", "rule", index, where)
    for r in resources:
        if r.startswith("/") or "//" in r:
            raise PolicyError(f"{where.key('rule', index, 'resources')}: rule {name!r}: resource {r!r} "
                              "looks like a path; resources read like projects/_/buckets/B/objects/**")
    return Rule(
        name=name,
        action=action,
        hosts=_host_patterns(_strings(entry, "hosts", "rule", index, where), "rule", index, where),
        methods=frozenset(methods),
        api_methods=tuple(_strings(entry, "api_methods", "rule", index, where)),
        resources=tuple(resources),
        proxy_users=frozenset(_strings(entry, "proxy_users", "rule", index, where)),
        origin=where.table("rule", index),
        ports=_ports(entry, name, index, where),
    )


def _ports(entry: Mapping[str, Any], rule: str, index: int, where: _Locator) -> frozenset[int]:
    value = entry.get("ports", [])
    if not isinstance(value, list) or not all(type(p) is int and 1 <= p <= 65535 for p in value):
        raise PolicyError(f"{where.key('rule', index, 'ports')}: rule {rule!r}: ports must be a list of "
                          f"port numbers (1-65535), e.g. ports = [443], got {value!r}")
    return frozenset(value)


def _no_unknown(entry: Mapping[str, Any], known: set[str], table: str, index: int, where: _Locator) -> None:
    for key in entry:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {close[0]}?" if close else f"the keys are {', '.join(sorted(known))}"
            raise PolicyError(f"{where.key(table, index, key)}: unknown key {key} in [[{table}]]: {hint}")


def _string(entry: Mapping[str, Any], key: str, table: str, index: int, where: _Locator) -> str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    raise PolicyError(f"{where.key(table, index, key)}: key {key}: expected a string")


def _strings(entry: Mapping[str, Any], key: str, table: str, index: int, where: _Locator) -> list[str]:
    value = entry.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where.key(table, index, key)}: key {key}: expected an array of non-empty strings")
    return list(value)


def _host_patterns(values: Iterable[str], table: str, index: int, where: _Locator) -> tuple[HostPattern, ...]:
    try:
        return tuple(hosts.parse_host_pattern(v) for v in values)
    except ValueError as e:
        raise PolicyError(f"{where.key(table, index, 'hosts')}: key hosts: {e}") from None


class _Locator:
    """``FILE:LINE`` of the n-th ``[[table]]`` and of a key inside it (``FILE`` when not found)."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def _headers(self, table: str) -> list[int]:
        header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
        return [i for i, line in enumerate(self.lines) if header.match(line)]

    def table(self, table: str, index: int) -> str:
        found = self._headers(table)
        return f"{self.path}:{found[index] + 1}" if index < len(found) else self.path

    def key(self, table: str | None, index: int, key: str) -> str:
        if table is None:
            start, end = 0, next((i for i, line in enumerate(self.lines) if line.lstrip().startswith("[")),
                                 len(self.lines))
        else:
            found = self._headers(table)
            if index >= len(found):
                return self.path
            start = found[index] + 1
            end = next((i for i in range(start, len(self.lines)) if self.lines[i].lstrip().startswith("[")),
                       len(self.lines))
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(start, end):
            if pattern.match(self.lines[i]):
                return f"{self.path}:{i + 1}"
        if table is None:  # a top-level key written as a table: [route] instead of [[route]]
            header = re.compile(rf"^\s*\[\s*{re.escape(key)}\s*\]")
            return next((f"{self.path}:{i + 1}" for i, line in enumerate(self.lines) if header.match(line)),
                        self.path)
        return self.table(table, index)


# -- building ----------------------------------------------------------------------------------------

def parse_chain(value: Any) -> tuple[str, ...]:
    """Service accounts in gcloud's order, from ``"A,B"`` or ``["A", "B"]``; ValueError says what is wrong."""
    from addons.impersonation import parse_chain as parse

    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))):
        raise ValueError("impersonate must be a service account email or an array of them")
    return parse(value)


def check_audience(value: Any) -> str:
    from addons.id_tokens import validate_audience

    return validate_audience(value if isinstance(value, str) else repr(value))


def parse_id_token_host(text: str) -> tuple[HostPattern, str | None]:
    """``*.run.app`` or ``app.example.com=123-abc.apps.googleusercontent.com``."""
    pattern, sep, audience = text.partition("=")
    parsed = hosts.parse_host_pattern(pattern)
    return parsed, (check_audience(audience.strip()) if sep else None)


def build_policy(
    sections: FileSections | None,
    *,
    inject_host: Sequence[str] = (),
    id_token_host: Sequence[str] = (),
    impersonate: str = "",
    default_deny: bool = False,
    proxy_users: Iterable[str] | None = None,
    check_key_files: bool = True,
) -> Policy:
    """The whole policy: file routes first, then the shorthand flags as routes; warnings attached.

    ``proxy_users``: the user names --proxy-auth knows (None: no proxy auth, so no route or rule
    may name users; an empty set: names are not listable, e.g. a single USER:PASS is given as is).

    Raises:
        PolicyError: a bad flag value, an unknown proxy user, an unreadable key file.
    """
    sections = sections or FileSections()
    try:
        chain = parse_chain(impersonate) if impersonate else ()
    except ValueError as e:
        raise PolicyError(f"--impersonate-service-account: {e}") from None
    shorthand: list[Route] = []
    for text in id_token_host:
        try:
            pattern, audience = parse_id_token_host(text)
        except ValueError as e:
            raise PolicyError(f"--id-token-host {text}: {e}") from None
        shorthand.append(Route(f"--id-token-host {text}", (pattern,),
                               Credential("id_token", chain=chain, audience=audience), origin="--id-token-host"))
    flag_credential = Credential("impersonate", chain=chain) if chain else ADC
    for text in inject_host:
        try:
            pattern = hosts.parse_host_pattern(text)
        except ValueError as e:
            raise PolicyError(f"--inject-host: {e}") from None
        shorthand.append(Route(f"--inject-host {text}", (pattern,), flag_credential, origin="--inject-host"))
    routes = (*sections.routes, *shorthand)
    _check_users(routes, sections.rules, proxy_users)
    if check_key_files:
        _check_key_files(routes)
    default: Action = "deny" if default_deny else (sections.default or "allow")
    return Policy(routes, sections.rules, default, tuple(_warnings(routes, sections.rules)))


def _check_users(routes: Sequence[Route], rules: Sequence[Rule], known: Iterable[str] | None) -> None:
    names = None if known is None else set(known)
    items: list[Route | Rule] = [*routes, *rules]
    for item in items:
        if not item.proxy_users:
            continue
        kind = "route" if isinstance(item, Route) else "rule"
        if names is None:
            raise PolicyError(f"{item.origin}: {kind} {item.name!r} names proxy_users, but --proxy-auth is not "
                              "set, so the proxy knows no user names")
        unknown = sorted(item.proxy_users - names) if names else []
        if unknown:
            raise PolicyError(f"{item.origin}: {kind} {item.name!r} names proxy user {unknown[0]!r}, who is not "
                              "in --proxy-auth")


def _check_key_files(routes: Sequence[Route]) -> None:
    from addons.key_files import check_key_file

    for route in routes:
        if route.credential.kind == "key_file" and route.credential.key_file:
            try:
                check_key_file(route.credential.key_file)
            except ValueError as e:
                raise PolicyError(f"{route.origin}: route {route.name!r}: {e}") from None


def _host_covers(earlier: HostPattern, later: HostPattern) -> bool:
    if earlier == later:
        return True
    return earlier.wildcard and later.suffix.endswith("." + earlier.suffix)


def _warnings(routes: Sequence[Route], rules: Sequence[Rule]) -> list[str]:
    """Rules no call can reach (an earlier rule matches everything they match) and duplicate routes."""
    found: list[str] = []
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if _rule_covers(earlier, later):
                found.append(f"{later.origin}: rule {later.name!r} can never match: rule {earlier.name!r} "
                             f"({earlier.origin}) matches every call it would")
                break
    seen: dict[tuple[Any, ...], Route] = {}
    for route in routes:
        key = (frozenset(route.hosts), frozenset(route.paths), route.proxy_users)
        if key in seen and not route.origin.startswith("--"):  # a file route may stand in for a flag's
            found.append(f"{route.origin}: route {route.name!r} is never used: route {seen[key].name!r} "
                         f"({seen[key].origin}) has the same hosts, paths and users and comes first")
        elif key not in seen:
            seen[key] = route
    return found


def _rule_covers(earlier: Rule, later: Rule) -> bool:
    if earlier.hosts and not (later.hosts and all(any(_host_covers(e, h) for e in earlier.hosts)
                                                  for h in later.hosts)):
        return False
    if earlier.methods and not (later.methods and later.methods <= earlier.methods):
        return False
    if earlier.ports and not (later.ports and later.ports <= earlier.ports):
        return False
    if earlier.proxy_users and not (later.proxy_users and later.proxy_users <= earlier.proxy_users):
        return False
    if earlier.api_methods and not (later.api_methods and covers(earlier.api_methods, later.api_methods)):
        return False
    return not (earlier.resources and not (later.resources and covers(earlier.resources, later.resources)))
