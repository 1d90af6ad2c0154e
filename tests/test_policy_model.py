"""addons/policy_model.py: route specificity, rules (first match wins), globs, recognised calls."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons.hosts import parse_host_pattern
from addons.policy_model import (
    ADC,
    NONE,
    Call,
    Credential,
    Policy,
    Route,
    Rule,
    api_method_matches,
    covers,
    has_dot_segments,
    path_matches,
    request_call,
    resource_matches,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def route(name: str, *host_patterns: str, paths: tuple[str, ...] = (), users: tuple[str, ...] = (),
          credential: Credential = ADC) -> Route:
    return Route(name, tuple(parse_host_pattern(h) for h in host_patterns), credential, paths=paths,
                 proxy_users=frozenset(users), origin=f"test:{name}")


def rule(name: str, action: str = "allow", *, hosts: tuple[str, ...] = (), methods: tuple[str, ...] = (),
         api_methods: tuple[str, ...] = (), resources: tuple[str, ...] = (), users: tuple[str, ...] = (),
         ports: tuple[int, ...] = ()) -> Rule:
    return Rule(name, action, tuple(parse_host_pattern(h) for h in hosts), frozenset(methods),  # type: ignore[arg-type]
                tuple(api_methods), tuple(resources), frozenset(users), origin=f"test:{name}", ports=frozenset(ports))


# -- route specificity ---------------------------------------------------------------------------------

# routes (in file order), host, path, user, the name route_for must pick
SPECIFICITY = [
    # 1. a user's own route beats an everyone-route, even a more host-specific one
    pytest.param([route("everyone-exact", "storage.googleapis.com"), route("alice", "*.googleapis.com", users=("alice",))],
                 "storage.googleapis.com", "/", "alice", "alice", id="user-route-beats-exact-host"),
    pytest.param([route("everyone-path", "storage.googleapis.com", paths=("/storage/v1/b/logs",)),
                  route("alice", "*.googleapis.com", users=("alice",))],
                 "storage.googleapis.com", "/storage/v1/b/logs/o", "alice", "alice", id="user-route-beats-path"),
    pytest.param([route("everyone-exact", "storage.googleapis.com"), route("alice", "*.googleapis.com", users=("alice",))],
                 "storage.googleapis.com", "/", "bob", "everyone-exact", id="other-user-gets-everyone-route"),
    pytest.param([route("everyone-exact", "storage.googleapis.com"), route("alice", "*.googleapis.com", users=("alice",))],
                 "storage.googleapis.com", "/", None, "everyone-exact", id="no-user-gets-everyone-route"),
    # 2. host: exact beats wildcard, longer suffix beats shorter
    pytest.param([route("wild", "*.googleapis.com"), route("exact", "storage.googleapis.com")],
                 "storage.googleapis.com", "/", None, "exact", id="exact-beats-wildcard"),
    pytest.param([route("exact", "storage.googleapis.com"), route("wild", "*.googleapis.com")],
                 "STORAGE.googleapis.com.", "/", None, "exact", id="exact-beats-wildcard-any-spelling"),
    pytest.param([route("exact-short", "a.com"), route("wild-long", "*.x.y.a.com")],
                 "a.com", "/", None, "exact-short", id="exact-only-matches-itself"),
    pytest.param([route("short", "*.googleapis.com"), route("long", "*.storage.googleapis.com")],
                 "b.storage.googleapis.com", "/", None, "long", id="longer-suffix-beats-shorter"),
    pytest.param([route("long", "*.storage.googleapis.com"), route("short", "*.googleapis.com")],
                 "b.storage.googleapis.com", "/", None, "long", id="longer-suffix-first-in-file"),
    pytest.param([route("host-exact", "storage.googleapis.com"),
                  route("wild-with-path", "*.googleapis.com", paths=("/storage",))],
                 "storage.googleapis.com", "/storage/v1", None, "host-exact", id="host-beats-path"),
    # 3. paths beat no paths; a longer prefix beats a shorter one
    pytest.param([route("no-paths", "storage.googleapis.com"),
                  route("paths", "storage.googleapis.com", paths=("/storage/v1/b/logs",))],
                 "storage.googleapis.com", "/storage/v1/b/logs/o/x", None, "paths", id="paths-beat-no-paths"),
    pytest.param([route("no-paths", "storage.googleapis.com"),
                  route("paths", "storage.googleapis.com", paths=("/storage/v1/b/logs",))],
                 "storage.googleapis.com", "/storage/v1/b/other", None, "no-paths", id="path-not-matching"),
    pytest.param([route("short", "storage.googleapis.com", paths=("/storage",)),
                  route("long", "storage.googleapis.com", paths=("/storage/v1/b/logs",))],
                 "storage.googleapis.com", "/storage/v1/b/logs", None, "long", id="longer-prefix-beats-shorter"),
    pytest.param([route("long", "storage.googleapis.com", paths=("/storage/v1/b/logs",)),
                  route("short", "storage.googleapis.com", paths=("/storage",))],
                 "storage.googleapis.com", "/storage/v1/b/logs?alt=json", None, "long", id="longer-prefix-first"),
    pytest.param([route("glob", "storage.googleapis.com", paths=("/storage/v1/b/*/o",)),
                  route("prefix", "storage.googleapis.com", paths=("/storage/v1/b",))],
                 "storage.googleapis.com", "/storage/v1/b/x/o", None, "glob", id="glob-ranks-by-literal-text"),
    # 4. file order breaks ties; shorthand (added after the file's routes) loses ties
    pytest.param([route("first", "storage.googleapis.com"), route("second", "storage.googleapis.com")],
                 "storage.googleapis.com", "/", None, "first", id="file-order-breaks-ties"),
    pytest.param([route("first", "*.googleapis.com", paths=("/a",)), route("second", "*.googleapis.com", paths=("/b",))],
                 "x.googleapis.com", "/a", None, "first", id="ties-only-among-matching"),
    pytest.param([route("file", "*.googleapis.com"), route("--inject-host *.googleapis.com", "*.googleapis.com")],
                 "storage.googleapis.com", "/", None, "file", id="file-beats-shorthand-on-tie"),
    pytest.param([route("file", "*.googleapis.com"), route("--inject-host storage", "storage.googleapis.com")],
                 "storage.googleapis.com", "/", None, "--inject-host storage", id="specific-shorthand-still-wins"),
    # no match at all
    pytest.param([route("a", "storage.googleapis.com")], "evil.com", "/", None, None, id="no-route"),
    pytest.param([route("a", "*.googleapis.com")], "googleapis.com", "/", None, None, id="wildcard-not-bare-suffix"),
    pytest.param([route("a", "*.googleapis.com", users=("alice",))], "x.googleapis.com", "/", None, None,
                 id="user-route-needs-user"),
]


@pytest.mark.parametrize("routes, host, path, user, expected", SPECIFICITY)
def test_most_specific_route_wins(routes, host, path, user, expected):
    found = Policy(routes=tuple(routes)).route_for(host, path, user)
    assert (found.name if found else None) == expected


def test_ordered_routes_lists_routes_in_evaluation_order():
    routes = (
        route("wild", "*.googleapis.com"),
        route("exact", "storage.googleapis.com"),
        route("exact-path", "storage.googleapis.com", paths=("/storage/v1/b/logs",)),
        route("exact-short-path", "storage.googleapis.com", paths=("/storage",)),
        route("alice", "*.example.com", users=("alice",)),
        route("longer-wild", "*.storage.googleapis.com"),
        route("exact-again", "storage.googleapis.com"),
    )
    assert [r.name for r in Policy(routes=routes).ordered_routes()] == [
        "alice", "exact-path", "exact-short-path", "exact", "exact-again", "longer-wild", "wild"]


# -- paths -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, path, expected", [
    ("/storage/v1/b/logs", "/storage/v1/b/logs", True),
    ("/storage/v1/b/logs", "/storage/v1/b/logs/o/x", True),
    ("/storage/v1/b/logs", "/storage/v1/b/logs?alt=json", True),
    ("/storage/v1/b/logs", "/storage/v1/b/logs2", False),  # a prefix ends on a segment boundary
    ("/storage/v1/b/logs", "/storage/v1/b/log", False),
    ("/storage/v1/b/logs", "/other/storage/v1/b/logs", False),
    ("/storage/v1/b/logs/", "/storage/v1/b/logs/o", True),
    ("/storage/v1/b/logs/", "/storage/v1/b/logs", False),
    ("/", "/anything/at/all", True),
    ("/storage/v1/b/*/o", "/storage/v1/b/logs/o", True),
    ("/storage/v1/b/*/o", "/storage/v1/b/a/b/o", False),  # * stays in one segment
    ("/storage/v1/b/*/o", "/storage/v1/b/logs/o/x", False),  # a glob matches the whole path
    ("/storage/v1/b/**", "/storage/v1/b/logs/o/x", True),
    ("/storage/v1/b/**", "/storage/v2/b/logs", False),
    ("/storage/v1/b/log?", "/storage/v1/b/logs", True),
    ("/storage/v1/b/log?", "/storage/v1/b/log/", False),  # ? is not /
    ("/storage/v1/b/logs-*", "/storage/v1/b/logs-1?alt=json", True),  # the query is not the path
    ("/Storage", "/storage", False),  # paths are case-sensitive
])
def test_path_matches(pattern, path, expected):
    assert path_matches(pattern, path) is expected


# -- globs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern, api_method, expected", [
    ("compute.instances.*", "compute.instances.list", True),
    ("compute.instances.*", "compute.instances.setMetadata", True),
    ("compute.instances.*", "compute.instanceGroups.list", False),
    ("compute.instances.*", "compute.instances", False),
    ("storage.*", "storage.objects.get", True),  # * crosses dots in api_methods
    ("storage.*", "storage", False),
    ("storage.*", "storagetransfer.jobs.get", False),
    ("storage.objects.get", "storage.objects.get", True),
    ("storage.objects.get", "storage.objects.getIamPolicy", False),
    ("storage.objects.ge?", "storage.objects.get", True),
    ("storage.objects.GET", "storage.objects.get", False),  # case-sensitive
    ("*", "bigquery.jobs.insert", True),
    ("storage.objects.(get|list)", "storage.objects.get", False),  # no regex syntax
])
def test_api_method_globs(pattern, api_method, expected):
    assert api_method_matches(pattern, api_method) is expected


LOGS = "projects/_/buckets/logs-*/objects/**"


@pytest.mark.parametrize("pattern, resource, expected", [
    (LOGS, "projects/_/buckets/logs-1/objects/a.txt", True),
    (LOGS, "projects/_/buckets/logs-1/objects/a/b/c.txt", True),
    (LOGS, "projects/_/buckets/logs-eu/objects/x", True),
    (LOGS, "projects/_/buckets/secrets/objects/a.txt", False),
    (LOGS, "projects/_/buckets/logs/objects/a.txt", False),
    (LOGS, "projects/_/buckets/logs-1", False),  # the bucket itself is no object
    (LOGS, "projects/_/buckets/logs-1/x/objects/a", False),  # * does not cross /
    ("projects/_/buckets/*/objects/*", "projects/_/buckets/b/objects/a", True),
    ("projects/_/buckets/*/objects/*", "projects/_/buckets/b/objects/a/b", False),
    ("projects/*", "projects/p", True),
    ("projects/*", "projects/p/zones/z", False),
    ("projects/**", "projects/p/zones/z", True),
    ("projects/p/zones/*/instances/*", "projects/p/zones/us-east1-b/instances/vm-1", True),
    ("projects/p/zones/*/instances/*", "projects/q/zones/us-east1-b/instances/vm-1", False),
    ("projects/_/buckets/Logs/objects/**", "projects/_/buckets/logs/objects/a", False),  # case-sensitive
    ("projects/_/buckets/a.b/objects/x", "projects/_/buckets/aXb/objects/x", False),  # . is literal
])
def test_resource_globs(pattern, resource, expected):
    assert resource_matches(pattern, resource) is expected


@pytest.mark.parametrize("earlier, later, expected", [
    (["storage.objects.get"], ["storage.objects.get"], True),
    (["**"], ["projects/_/buckets/b/objects/**"], True),
    (["*"], ["storage.objects.get"], True),
    (["*"], ["projects/p"], False),
    (["*"], ["**"], False),  # for resources, * stays in one segment and ** does not
    (["storage.*"], ["storage.objects.get"], False),  # conservative: unsure is False
    (["a", "b"], ["b"], True),
    (["a"], ["a", "b"], False),
])
def test_covers(earlier, later, expected):
    assert covers(earlier, later) is expected


# -- rules -------------------------------------------------------------------------------------------------

GET_LOGS = Call("storage.googleapis.com", "GET", "/storage/v1/b/logs-1/o/a", "storage.objects.get",
                "projects/_/buckets/logs-1/objects/a")
GET_SECRET = Call("storage.googleapis.com", "GET", "/storage/v1/b/secret/o/a", "storage.objects.get",
                  "projects/_/buckets/secret/objects/a")
DELETE_LOGS = Call("storage.googleapis.com", "DELETE", "/storage/v1/b/logs-1/o/a", "storage.objects.delete",
                   "projects/_/buckets/logs-1/objects/a")
LIST_VMS = Call("compute.googleapis.com", "GET", "/compute/v1/projects/p/zones/z/instances", "compute.instances.list",
                "projects/p/zones/z/instances")
UNKNOWN = Call("storage.googleapis.com", "GET", "/storage/v1/whatever")
TUNNEL = Call("example.com", tunnel=True)
TUNNEL_GOOGLE = Call("storage.googleapis.com", tunnel=True)
TUNNEL_SSH = Call("example.com", tunnel=True, port=22)
GET_LOGS_8443 = Call("storage.googleapis.com", "GET", "/storage/v1/b/logs-1/o/a", "storage.objects.get",
                     "projects/_/buckets/logs-1/objects/a", port=8443)
EXAMPLE = Call("example.com", "GET", "/")

# rules, default, call, expected (action, rule name)
DECISIONS = [
    pytest.param([], "allow", GET_SECRET, ("allow", None), id="default-allow"),
    pytest.param([], "deny", GET_LOGS, ("deny", None), id="default-deny"),
    pytest.param([rule("a", "allow"), rule("d", "deny")], "deny", GET_LOGS, ("allow", "a"), id="first-match-wins"),
    pytest.param([rule("d", "deny"), rule("a", "allow")], "allow", GET_LOGS, ("deny", "d"), id="first-match-wins-deny"),
    pytest.param([rule("del", "deny", methods=("DELETE",)), rule("all", "allow")], "deny", DELETE_LOGS,
                 ("deny", "del"), id="method-deny"),
    pytest.param([rule("del", "deny", methods=("DELETE",)), rule("all", "allow")], "deny", GET_LOGS,
                 ("allow", "all"), id="method-other-falls-through"),
    pytest.param([rule("logs", resources=(LOGS,))], "deny", GET_LOGS, ("allow", "logs"), id="resource-match"),
    pytest.param([rule("logs", resources=(LOGS,))], "deny", GET_SECRET, ("deny", None), id="resource-other-bucket"),
    pytest.param([rule("read", api_methods=("storage.objects.get",), resources=(LOGS,))], "deny", DELETE_LOGS,
                 ("deny", None), id="api-method-and-resource-both-needed"),
    pytest.param([rule("vms", api_methods=("compute.instances.*",))], "deny", LIST_VMS, ("allow", "vms"),
                 id="api-method-glob"),
    pytest.param([rule("gcs", api_methods=("storage.*",))], "deny", LIST_VMS, ("deny", None), id="api-method-glob-miss"),
    pytest.param([rule("gcs", api_methods=("storage.*",))], "deny", DELETE_LOGS, ("allow", "gcs"),
                 id="api-method-storage-star"),
    pytest.param([rule("host", hosts=("*.googleapis.com",))], "deny", LIST_VMS, ("allow", "host"), id="host-rule"),
    pytest.param([rule("host", hosts=("storage.googleapis.com",))], "deny", LIST_VMS, ("deny", None),
                 id="host-rule-miss"),
    # unrecognised calls never match api_methods / resources rules, in either direction
    pytest.param([rule("any-api", api_methods=("*",))], "deny", UNKNOWN, ("deny", None), id="unknown-vs-api-star"),
    pytest.param([rule("any-res", resources=("**",))], "deny", UNKNOWN, ("deny", None), id="unknown-vs-resource-star"),
    pytest.param([rule("deny-api", "deny", api_methods=("*",))], "allow", UNKNOWN, ("allow", None),
                 id="unknown-escapes-api-deny"),
    pytest.param([rule("any-api", api_methods=("*",)), rule("hosts", hosts=("*.googleapis.com",))], "deny", UNKNOWN,
                 ("allow", "hosts"), id="unknown-matches-host-rule"),
    pytest.param([rule("get", methods=("GET",))], "deny", UNKNOWN, ("allow", "get"), id="unknown-matches-method-rule"),
    # tunnels: only host-level rules
    pytest.param([rule("egress", hosts=("example.com",))], "deny", TUNNEL, ("allow", "egress"), id="tunnel-host-rule"),
    pytest.param([rule("egress", hosts=("example.org",))], "deny", TUNNEL, ("deny", None), id="tunnel-other-host"),
    pytest.param([rule("catch-all")], "deny", TUNNEL, ("allow", "catch-all"), id="tunnel-catch-all"),
    pytest.param([rule("get", methods=("GET",), hosts=("example.com",))], "deny", TUNNEL, ("deny", None),
                 id="tunnel-vs-method-rule"),
    pytest.param([rule("api", api_methods=("*",), hosts=("storage.googleapis.com",))], "deny", TUNNEL_GOOGLE,
                 ("deny", None), id="tunnel-vs-api-rule"),
    pytest.param([rule("res", "deny", resources=("**",))], "allow", TUNNEL_GOOGLE, ("allow", None),
                 id="tunnel-vs-resource-deny"),
    pytest.param([rule("egress", hosts=("example.com",))], "deny", EXAMPLE, ("allow", "egress"),
                 id="seen-request-host-rule"),
    # ports: a rule naming ports matches only those; one without, any
    pytest.param([rule("https", hosts=("example.com",), ports=(443,))], "deny", TUNNEL, ("allow", "https"),
                 id="tunnel-port-listed"),
    pytest.param([rule("https", hosts=("example.com",), ports=(443,))], "deny", TUNNEL_SSH, ("deny", None),
                 id="tunnel-port-not-listed"),
    pytest.param([rule("egress", hosts=("example.com",))], "deny", TUNNEL_SSH, ("allow", "egress"),
                 id="tunnel-any-port-without-ports"),
    pytest.param([rule("odd", "deny", ports=(8443,)), rule("all")], "deny", GET_LOGS, ("allow", "all"),
                 id="seen-request-port-miss"),
    pytest.param([rule("odd", "deny", ports=(8443,)), rule("all")], "deny", GET_LOGS_8443, ("deny", "odd"),
                 id="seen-request-port-match"),
]


@pytest.mark.parametrize("rules, default, call, expected", DECISIONS)
def test_decide(rules, default, call, expected):
    decision = Policy(rules=tuple(rules), default=default).decide(call)
    assert (decision.action, decision.rule_name) == expected
    assert decision.allowed is (expected[0] == "allow")
    assert (decision.rule is None) is (expected[1] is None)
    assert (f"'{expected[1]}'" in decision.reason) if expected[1] else f"the default is {default}" in decision.reason


@pytest.mark.parametrize("users, proxy_user, matches", [
    (("alice",), "alice", True),
    (("alice",), "bob", False),
    (("alice",), None, False),
    (("alice", "bob"), "bob", True),
    ((), None, True),
    ((), "carol", True),
])
def test_rule_proxy_users(users, proxy_user, matches):
    call = Call("storage.googleapis.com", "GET", "/", proxy_user=proxy_user)
    assert rule("r", users=users).matches(call) is matches
    assert rule("r", users=users, hosts=("example.com",)).matches(
        Call("example.com", tunnel=True, proxy_user=proxy_user)) is matches


def test_tunnel_reason_says_no_rule_allows_it():
    assert "no rule allows this tunnel" in Policy(default="deny").decide(TUNNEL).reason
    assert "no rule matched" in Policy(default="deny").decide(EXAMPLE).reason


# -- recognised calls -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, method, path, api_method, resource", [
    ("storage.googleapis.com", "GET", "/storage/v1/b/logs-1/o/a%2Fb.txt?alt=media", "storage.objects.get",
     "projects/_/buckets/logs-1/objects/a/b.txt"),
    ("storage.googleapis.com", "GET", "/download/storage/v1/b/logs-1/o/a.txt", "storage.objects.get",
     "projects/_/buckets/logs-1/objects/a.txt"),
    ("storage.googleapis.com", "POST", "/upload/storage/v1/b/logs-1/o?uploadType=media&name=x.txt",
     "storage.objects.insert", "projects/_/buckets/logs-1/objects/x.txt"),
    ("storage.googleapis.com", "DELETE", "/storage/v1/b/logs-1/o/x", "storage.objects.delete",
     "projects/_/buckets/logs-1/objects/x"),
    ("storage.googleapis.com", "get", "/storage/v1/b?project=p", "storage.buckets.list", "projects/p"),
    ("storage.googleapis.com", "GET", "/logs-1/a/b.txt", "storage.objects.get",  # XML, path style
     "projects/_/buckets/logs-1/objects/a/b.txt"),
    ("logs-1.storage.googleapis.com", "PUT", "/a/b.txt", "storage.objects.insert",  # XML, virtual host
     "projects/_/buckets/logs-1/objects/a/b.txt"),
    ("compute.googleapis.com", "GET", "/compute/v1/projects/p/zones/z/instances", "compute.instances.list",
     "projects/p/zones/z/instances"),
    ("compute.googleapis.com", "POST", "/compute/v1/projects/p/zones/z/instances/vm/stop", "compute.instances.stop",
     "projects/p/zones/z/instances/vm"),
    ("COMPUTE.googleapis.com.", "DELETE", "/compute/v1/projects/p/zones/z/instances/vm", "compute.instances.delete",
     "projects/p/zones/z/instances/vm"),
    ("storage.googleapis.com", "GET", "/storage/v1/b/logs-1/o/a..b", "storage.objects.get",  # not a dot segment
     "projects/_/buckets/logs-1/objects/a..b"),
    ("www.example.com", "GET", "/storage/v1/b/x/o/y", None, None),  # not Google
])
def test_request_call_recognises(host, method, path, api_method, resource):
    call = request_call(host, method, path, proxy_user="alice")
    assert (call.api_method, call.resource) == (api_method, resource)
    assert call.method == method.upper() and call.host == host.lower().rstrip(".")
    assert call.proxy_user == "alice" and call.path == path and not call.tunnel


DOT_PATHS = [
    "/storage/v1/b/logs-1/o/../../b/secret/o/x",
    "/storage/v1/b/logs-1/o/./x",
    "/storage/v1/b/logs-1/o/%2e%2e/x",
    "/storage/v1/b/logs-1/o/%2E%2E/x",
    "/storage/v1/b/logs-1/o/%2E./x",
    "/storage/v1/b/logs-1/o/.%2e",
    "/storage/v1/b/logs-1/o/a%2F..%2Fb",
    "/storage/v1/b/logs-1/o/a%2f%2e%2e%2fb",
    "/logs-1/..\\secret/x",
    "/logs-1/x/..",
    "/logs-1/x/..?alt=json",
]


@pytest.mark.parametrize("path", DOT_PATHS)
def test_dot_segments_make_a_call_unrecognised(path):
    assert has_dot_segments(path)
    call = request_call("storage.googleapis.com", "GET", path)
    assert call.api_method is None and call.resource is None
    # ... so an allow rule over the logs buckets does not match it, and default deny holds
    policy = Policy(rules=(rule("logs", api_methods=("storage.objects.get",), resources=(LOGS,)),), default="deny")
    assert not policy.decide(call).allowed


@pytest.mark.parametrize("path", ["/storage/v1/b/logs-1/o/a..b", "/a/.b/c", "/a/b.?x=/../", "/...", "/a%2e"])
def test_no_dot_segments(path):
    assert not has_dot_segments(path)


# -- interception, credentials ------------------------------------------------------------------------------

def test_intercepted_excludes_routes_without_a_credential():
    policy = Policy(routes=(
        route("adc", "*.googleapis.com", "storage.googleapis.com"),
        route("none", "example.com", credential=NONE),
        route("idt", "*.run.app", credential=Credential("id_token")),
        route("again", "storage.googleapis.com"),
        route("none-too", "other.example", credential=Credential("none")),
    ))
    assert [str(p) for p in policy.intercepted] == ["*.googleapis.com", "storage.googleapis.com", "*.run.app"]
    assert policy.intercepted_patterns() == list(policy.intercepted)


@pytest.mark.parametrize("path", ["/storage/v1/b/ci-x/../prod/o", "/storage/v1/b/ci-x/%2e%2e/prod/o",
                                  "/storage/v1/b/ci-x/./o"])
def test_a_path_route_never_takes_a_path_with_dot_segments(path):
    """A front end may collapse them: the prefix a path route checks would not be where the call goes."""
    policy = Policy(routes=(route("ci", "storage.googleapis.com", paths=("/storage/v1/b/ci-*/**",),
                                  credential=Credential("key_file", key_file="/k.json")),
                            route("adc", "*.googleapis.com")))
    assert policy.route_for("storage.googleapis.com", path).name == "adc"
    assert policy.route_for("storage.googleapis.com", "/storage/v1/b/ci-x/o").name == "ci"

@pytest.mark.parametrize(("routes", "host", "intercepts"), [
    pytest.param([route("adc", "*.googleapis.com"), route("pub", "public.googleapis.com", credential=NONE)],
                 "public.googleapis.com", False, id="exact-none-under-a-wildcard-is-untouched"),
    pytest.param([route("adc", "*.googleapis.com"), route("pub", "public.googleapis.com", credential=NONE)],
                 "storage.googleapis.com", True, id="the-wildcard-still-intercepts-the-rest"),
    pytest.param([route("adc", "*.googleapis.com"), route("pub", "public.googleapis.com", credential=NONE)],
                 "PUBLIC.googleapis.com.", False, id="case-and-trailing-dot"),
    pytest.param([route("adc", "*.googleapis.com"), route("pub", "public.googleapis.com", credential=NONE),
                  route("ci", "*.googleapis.com", users=("ci",))],
                 "public.googleapis.com", True, id="a-user-route-may-still-give-it-a-credential"),
    pytest.param([route("adc", "*.googleapis.com"), route("pub", "public.googleapis.com", credential=NONE),
                  route("pub-key", "public.googleapis.com", paths=("/secret",))],
                 "public.googleapis.com", True, id="an-exact-path-route-may-still-give-it-a-credential"),
    pytest.param([route("adc", "*.googleapis.com"),
                  route("pub", "public.googleapis.com", paths=("/open",), credential=NONE)],
                 "public.googleapis.com", True, id="a-none-path-route-leaves-the-host-intercepted"),
    pytest.param([route("pub", "public.googleapis.com", credential=NONE)],
                 "public.googleapis.com", False, id="nothing-intercepts-it-anyway"),
])
def test_a_none_route_takes_its_host_out_of_interception(routes, host, intercepts):
    policy = Policy(routes=tuple(routes))
    assert policy.intercepts(host) is intercepts
    # and whenever it is not intercepted, no request to it could have had a credential
    if not intercepts:
        assert all(policy.route_for(host, path, user) is None or not policy.route_for(host, path, user).credential.injects
                   for path in ("/", "/secret", "/open/x") for user in (None, "ci"))


@pytest.mark.parametrize("credential, label, injects", [
    (ADC, "adc", True),
    (Credential("impersonate", chain=("a@p.iam.gserviceaccount.com",)), "impersonated", True),
    (Credential("id_token", audience="https://x.run.app"), "id_token", True),
    (Credential("key_file", key_file="/k.json"), "key_file", True),
    (NONE, "none", False),
])

def test_credential_labels(credential, label, injects):
    assert credential.label == label
    assert credential.injects is injects


def test_credential_descriptions():
    chain = ("d@p.iam.gserviceaccount.com", "t@p.iam.gserviceaccount.com")
    assert "t@p.iam.gserviceaccount.com via d@p.iam.gserviceaccount.com" in Credential("impersonate", chain).describe()
    assert Credential("id_token").describe() == "ID token for audience https://HOST with ADC"
    assert Credential("id_token", chain[1:], "aud").describe() == "ID token for audience aud as t@p.iam.gserviceaccount.com"
    assert "/k.json" in Credential("key_file", key_file="/k.json").describe()
    assert Credential("impersonate", chain) == Credential("impersonate", chain)  # equal: one token cache


# -- properties ----------------------------------------------------------------------------------------------

LABELS = ["a", "b", "c"]
host_st = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(lambda ls: ".".join([*ls, "com"]))
pattern_st = st.tuples(st.booleans(), host_st).map(lambda t: f"*.{t[1]}" if t[0] else t[1])
path_pattern_st = st.lists(st.sampled_from(["x", "y", "*", "**", "x?"]), min_size=1, max_size=3).map(
    lambda parts: "/" + "/".join(parts))
path_st = st.lists(st.sampled_from(["x", "y", "xy"]), max_size=4).map(lambda parts: "/" + "/".join(parts))
user_st = st.sampled_from([None, "alice", "bob"])
route_st = st.builds(
    lambda hs, ps, us: (hs, ps, us),
    st.lists(pattern_st, min_size=1, max_size=2),
    st.lists(path_pattern_st, max_size=2),
    st.lists(st.sampled_from(["alice", "bob"]), max_size=1),
)


@FAST
@given(st.lists(route_st, max_size=6), host_st, path_st, user_st)
def test_route_for_is_a_most_specific_match(specs, host, path, user):
    routes = tuple(route(f"r{i}", *hs, paths=tuple(ps), users=tuple(us)) for i, (hs, ps, us) in enumerate(specs))
    found = Policy(routes=routes).route_for(host, path, user)
    ranks = [(r, r.match_rank(host, path, user)) for r in routes]
    matching = [(r, rank) for r, rank in ranks if rank is not None]
    if found is None:
        assert not matching
        return
    best = found.match_rank(host, path, user)
    assert best is not None
    assert all(rank <= best for _, rank in matching)
    # among equally specific matches, the first written wins
    assert next(r for r, rank in matching if rank == best) is found


call_st = st.builds(
    Call,
    host=host_st,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    api_method=st.sampled_from([None, "storage.objects.get", "compute.instances.list"]),
    resource=st.sampled_from([None, "projects/_/buckets/logs-1/objects/a", "projects/p/zones/z/instances"]),
    proxy_user=user_st,
    tunnel=st.booleans(),
    port=st.sampled_from([443, 80, 22]),
)
rule_st = st.builds(
    lambda i, action, hs, ms, ams, rs, us, ps: rule(f"r{i}", action, hosts=tuple(hs), methods=tuple(ms),
                                                   api_methods=tuple(ams), resources=tuple(rs), users=tuple(us),
                                                   ports=tuple(ps)),
    st.integers(0, 10**6),
    st.sampled_from(["allow", "deny"]),
    st.lists(pattern_st, max_size=2),
    st.lists(st.sampled_from(["GET", "POST"]), max_size=1),
    st.lists(st.sampled_from(["storage.*", "compute.instances.*", "*"]), max_size=1),
    st.lists(st.sampled_from([LOGS, "projects/*/zones/*/instances", "**"]), max_size=1),
    st.lists(st.sampled_from(["alice", "bob"]), max_size=1),
    st.lists(st.sampled_from([443, 22]), max_size=2),
)


@FAST
@given(st.lists(rule_st, max_size=6), st.sampled_from(["allow", "deny"]), call_st)
def test_decide_returns_the_first_matching_rule(rules, default, call):
    decision = Policy(rules=tuple(rules), default=default).decide(call)
    first = next((r for r in rules if r.matches(call)), None)
    assert decision.rule is first
    assert decision.action == (first.action if first else default)
    if call.tunnel and first is not None:
        assert not (first.methods or first.api_methods or first.resources)
    if call.api_method is None and first is not None:
        assert not first.api_methods
    if call.resource is None and first is not None:
        assert not first.resources


def test_minted_credentials_are_distinct_and_say_which_are_per_host():
    sa = Credential("impersonate", chain=("t@p.iam.gserviceaccount.com",))
    routes = (
        route("adc", "*.googleapis.com"),
        route("none", "pypi.org", credential=NONE),
        route("imp-a", "storage.googleapis.com", credential=sa),
        route("imp-b", "bigquery.googleapis.com", credential=sa),  # the same credential: tried once
        route("run-any", "*.a.run.app", credential=Credential("id_token")),
        route("run-one", "hello.a.run.app", credential=Credential("id_token")),
        route("iap", "*.example.com", credential=Credential("id_token", audience="123.apps.googleusercontent.com")),
    )
    minted = Policy(routes=routes).minted_credentials()
    assert [(m.route.name, m.host, m.per_host) for m in minted] == [
        ("run-one", "hello.a.run.app", False),
        ("imp-a", "storage.googleapis.com", False),
        ("run-any", "example.a.run.app", True),  # most specific first: a longer wildcard suffix
        ("iap", "example.example.com", False),
    ]
