"""``policy check``, ``policy explain`` and ``policy suggest``: the policy the proxy would run, in words.

check and explain build the Policy exactly as ``serve`` does (settings.from_sources, then
addons.routing.policy_from_options), so what they print is what the proxy decides. Rendering is
pure (Policy in, text out); only ``cmd_policy`` reads flags and files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from addons import hosts
from addons.options import BY_NAME, Option
from addons.policy_model import Call, Decision, Policy, Route, Rule, recognise, request_call
from proxy.errors import ExitStatus, ProxyError

# The settings a policy is made of; check and explain take these flags as serve does.
POLICY_OPTIONS = ("config", "proxy_auth", "inject_host", "id_token_host", "impersonate_service_account",
                  "default_deny")
_METHOD = re.compile(r"^[A-Za-z]+$")


def add_parsers(sub: Any, add_flag: Callable[[Any, Option], None]) -> None:
    """``policy check|explain|suggest`` under ``sub``; ``add_flag`` makes a flag from the option table."""
    policy = sub.add_parser("policy", help="check, explain or draft the routes and rules (the config file's "
                                           "[[route]] and [[rule]])")
    actions = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate the policy and print routes and rules in evaluation order")
    explain = actions.add_parser("explain", help="which route, credential and rule decide one call, and why")
    explain.add_argument("method", metavar="METHOD", help="HTTP method, e.g. GET")
    explain.add_argument("url", metavar="URL", help="the full URL, e.g. https://storage.googleapis.com/storage/v1/b/B")
    explain.add_argument("--user", metavar="U", help="the --proxy-auth user making the call")
    explain.add_argument("--json", action="store_true", help="print the explanation as JSON")
    for parser in (check, explain):
        for name in POLICY_OPTIONS:
            add_flag(parser, BY_NAME[name])
    suggest = actions.add_parser("suggest", help="draft a default-deny config (rules and IAM permissions) "
                                                 "from an audit log")
    suggest.add_argument("log", metavar="AUDIT_LOG", help="a JSON-lines audit log file, or - for stdin")
    suggest.add_argument("--principal", metavar="P", help="keep only the calls made as this principal")


def cmd_policy(args: argparse.Namespace) -> int:
    if args.policy_command == "suggest":
        return _suggest(args.log, args.principal)
    flags = {name: getattr(args, name, None) for name in POLICY_OPTIONS}
    policy, users, config = load_policy(flags)
    if args.policy_command == "check":
        sys.stdout.write(render_check(policy, config))
        return ExitStatus.OK
    if args.user is not None and users is None:
        raise ProxyError(f"--user {args.user}: proxy users exist only with --proxy-auth (give it as serve would)")
    if args.user is not None and users and args.user not in users:
        raise ProxyError(f"--user {args.user}: no such user in --proxy-auth")
    result = explain(policy, args.method, args.url, args.user)
    sys.stdout.write(json.dumps(result.as_json(), indent=2) + "\n" if args.json else render_explanation(result))
    return ExitStatus.OK


def load_policy(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None
                ) -> tuple[Policy, frozenset[str] | None, str | None]:
    """The Policy ``serve`` would run with these flags (and the environment and config file), the
    proxy user names (None: no --proxy-auth) and the config file it read (None: none).

    Raises:
        ProxyError: a bad file, flag or rule, as one sentence (exit 64).
    """
    from addons.policy_file import PolicyError
    from addons.proxy_auth import known_proxy_users
    from addons.routing import policy_from_options
    from proxy import settings as settings_mod

    settings = settings_mod.from_sources(dict(flags), environ)
    try:
        users = known_proxy_users(settings.proxy_auth or "")
        return policy_from_options(settings), users, str(settings.config) if settings.config else None
    except (PolicyError, ValueError) as e:
        raise ProxyError(str(e)) from None


# -- check -------------------------------------------------------------------------------------------

def render_check(policy: Policy, config: str | None = None) -> str:
    """Routes most specific first, rules in order, the default, then ``warning:`` lines."""
    out = [f"config: {config}" if config else "config: none (routes from the flags only)", ""]
    out.append("routes, most specific first (a request takes the first that matches it):")
    if not policy.routes:
        out.append("  (none: no request gets a credential)")
    for i, route in enumerate(policy.ordered_routes(), 1):
        out += [f"  {i}. {route.name}  ({route.origin or 'flag'})", *_route_lines(route)]
    out += ["", "rules, first match wins:"]
    if not policy.rules:
        out.append("  (none)")
    for i, rule in enumerate(policy.rules, 1):
        out += [f"  {i}. {rule.name}: {rule.action}  ({rule.origin or 'config'})", f"     when {_criteria(rule)}"]
    out += ["", f"default: {policy.default} (when no rule matches)"]
    out += [f"warning: {w}" for w in policy.warnings]
    return "\n".join(out) + "\n"


def _route_lines(route: Route) -> list[str]:
    return [
        f"     hosts: {', '.join(str(h) for h in route.hosts)}",
        f"     paths: {', '.join(route.paths) if route.paths else 'any'}",
        f"     users: {', '.join(sorted(route.proxy_users)) if route.proxy_users else 'everyone'}",
        f"     credential: {route.credential.describe()}",
    ]


def _criteria(rule: Rule) -> str:
    parts = []
    if rule.proxy_users:
        parts.append(f"proxy user is {_either(sorted(rule.proxy_users))}")
    if rule.hosts:
        parts.append(f"host is {_either([str(h) for h in rule.hosts])}")
    if rule.ports:
        parts.append(f"port is {_either([str(p) for p in sorted(rule.ports)])}")
    if rule.methods:
        parts.append(f"HTTP method is {_either(sorted(rule.methods))}")
    if rule.api_methods:
        parts.append(f"API method matches {_either(list(rule.api_methods))}")
    if rule.resources:
        parts.append(f"resource matches {_either(list(rule.resources))}")
    return " and ".join(parts) if parts else "always (every call, tunnels included)"


def _either(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else "one of " + ", ".join(values)


# -- explain -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Explanation:
    method: str
    url: str
    call: Call
    service: str | None
    intercepted: bool
    route: Route | None
    why_route: str
    others: tuple[Route, ...]
    decision: Decision

    def as_json(self) -> dict[str, Any]:
        def route_json(route: Route) -> dict[str, Any]:
            return {"name": route.name, "origin": route.origin, "credential": route.credential.label,
                    "credential_description": route.credential.describe(self.call.host, self.call.path)}

        rule = self.decision.rule
        return {
            "method": self.method, "url": self.url, "host": self.call.host, "port": self.call.port,
            "path": self.call.path,
            "proxy_user": self.call.proxy_user, "intercepted": self.intercepted, "service": self.service,
            "api_method": self.call.api_method, "resource": self.call.resource,
            "route": route_json(self.route) if self.route else None, "why_route": self.why_route,
            "other_matching_routes": [route_json(r) for r in self.others],
            "decision": {"action": self.decision.action, "rule": rule.name if rule else None,
                         "origin": rule.origin if rule else None, "reason": self.decision.reason},
        }


def parse_target(method: str, url: str) -> tuple[str, str, str]:
    """METHOD and URL -> (METHOD, host, path with query); ProxyError names what is wrong."""
    if not _METHOD.match(method):
        raise ProxyError(f"{method!r} is not an HTTP method (e.g. GET, POST)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise ProxyError(f"{url!r} is not a URL: {e}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ProxyError(f"{url!r} is not an http:// or https:// URL with a host "
                         "(e.g. https://storage.googleapis.com/storage/v1/b/BUCKET)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return method.upper(), hosts.normalize_host(host), path


def explain(policy: Policy, method: str, url: str, user: str | None = None) -> Explanation:
    """Which route and rule decide METHOD URL for ``user``, as the proxy would."""
    method, host, path = parse_target(method, url)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    intercepted = policy.intercepts(host)
    if not intercepted and parts.scheme == "https":
        call = Call(host=host, method=method, path=path, proxy_user=user, tunnel=True, port=port)
        passthrough = policy.route_for(host, path, user)
        why = (f"route {passthrough.name} ({passthrough.origin or 'flag'}) adds no credential"
               if passthrough else "no route adds a credential for this host")
        return Explanation(method, url, call, None, False, None,
                           f"{why}, so the proxy does not open its TLS: it is tunnelled untouched", (),
                           policy.decide(call))
    api = recognise(host, method, path)  # plain http:// is seen (and decided) request by request too
    call = request_call(host, method, path, proxy_user=user, api=api, port=port)
    service = api.service
    matching = [(r.match_rank(host, path, user), i, r) for i, r in enumerate(policy.routes)]
    ranked = sorted(((rank, -i, r) for rank, i, r in matching if rank is not None), key=lambda t: t[:2],
                    reverse=True)
    chosen = policy.route_for(host, path, user)
    others = tuple(r for _, _, r in ranked if r is not chosen)
    if chosen is None and not intercepted:
        why = "no route adds a credential for this host; plain http:// is seen request by request, so rules apply"
    elif chosen is None:
        why = "no route matches this path or user, so no credential is added (other paths of this host have one)"
    elif not others:
        why = "the only route that matches"
    else:
        why = (f"the most specific of {len(ranked)} matching routes: "
               f"{_why_first(ranked[0][0], ranked[1][0], user)}")
    return Explanation(method, url, call, service, True, chosen, why, others, policy.decide(call))


def _why_first(best: tuple[int, ...], runner_up: tuple[int, ...], user: str | None) -> str:
    """The first difference between two routes' ranks, in words (policy_model's order)."""
    reasons = (
        f"it is for proxy user {user}, and a user's own route beats one for everyone",
        "an exact host name beats a wildcard",
        "a longer host suffix beats a shorter one",
        "a route whose paths match beats one without paths" if runner_up[3:4] == (0,)
        else "a longer matching path prefix beats a shorter one",
    )
    for i, (a, b) in enumerate(zip(best, runner_up)):
        if a != b:
            return reasons[i] if i < len(reasons) else "it ranks higher"
    return "it comes first (file routes in file order, then --id-token-host, then --inject-host)"


def render_explanation(result: Explanation) -> str:
    call = result.call
    who = f" (proxy user {call.proxy_user})" if call.proxy_user else ""
    out = [f"call: {result.method} {result.url}{who}"]
    if not result.intercepted:
        out += [f"route: none: {result.why_route}", "credential: none"]
        decision = result.decision
        out.append(f"decision: {decision.action}: {decision.reason}"
                   + ("" if decision.rule or decision.allowed else " (a CONNECT to this host would be refused)"))
        return "\n".join(out) + "\n"
    if call.api_method:
        out.append(f"recognised: service {result.service or '?'}, API method {call.api_method}, "
                   f"resource {call.resource or '(none)'}")
    else:
        service = f"service {result.service}, " if result.service else ""
        out.append(f"recognised: {service}no API method (rules naming api_methods or resources do not match it)")
    if result.route is None:
        out += [f"route: none: {result.why_route}", "credential: none (no token added)"]
    else:
        out.append(f"route: {result.route.name} ({result.route.origin or 'flag'}): {result.why_route}")
        out += [f"  also matched: {r.name} ({r.origin or 'flag'})" for r in result.others]
        out.append(f"credential: {result.route.credential.describe(call.host, call.path)}")
    out.append(f"decision: {result.decision.action}: {result.decision.reason}")
    return "\n".join(out) + "\n"


# -- suggest -----------------------------------------------------------------------------------------

def _suggest(path: str, principal: str | None) -> int:
    from proxy import policy_suggest

    try:
        read = policy_suggest.read_audit(policy_suggest.read_lines(path), principal)
    except OSError as e:
        raise ProxyError(f"cannot read audit log {path}: {e.strerror or e}") from None
    sys.stdout.write(policy_suggest.suggest(read, source=path, principal=principal))
    if read.malformed:
        print(f"gcp-auth-proxy: skipped {read.malformed} malformed line(s) in {path}", file=sys.stderr)
    return ExitStatus.OK
