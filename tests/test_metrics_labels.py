"""Metric labels come from small fixed sets, whatever hosts and services clients make up."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from addons.hosts import parse_host_pattern
from addons.metrics import SERVICES, host_label, service_label, status_label
from fakegoogle import FakeGoogle
from tests.conftest import ProxyFactory
from tests.test_admin import admin_url, get

PATTERNS = [parse_host_pattern(p) for p in ("*.googleapis.com", "storage.example.test", "*.corp.example.test")]


@pytest.mark.parametrize("host,label", [
    ("storage.googleapis.com", "*.googleapis.com"),
    ("STORAGE.GOOGLEAPIS.COM.", "*.googleapis.com"),
    ("a1b2c3.googleapis.com", "*.googleapis.com"),
    ("storage.example.test", "storage.example.test"),
    ("x.y.corp.example.test", "*.corp.example.test"),
    ("googleapis.com", "other"),
    ("evilgoogleapis.com", "other"),
    ("storage.googleapis.com.evil.net", "other"),
    ("169.254.169.254", "other"),
    ("", "other"),
    (None, "other"),
])
def test_host_label_is_the_matching_pattern_or_other(host: str | None, label: str):
    assert host_label(host, PATTERNS) == label


def test_host_label_without_patterns_is_other():
    assert host_label("storage.googleapis.com", []) == "other"


@pytest.mark.parametrize("service,label", [
    ("storage", "storage"), ("compute", "compute"), ("bigquery", "bigquery"),
    ("a1b2c3", "other"), ("Storage", "other"), ("", "other"), (None, "other"),
])
def test_service_label_is_a_recognised_service_or_other(service: str | None, label: str):
    assert service_label(service) == label


@pytest.mark.parametrize("status,label", [
    (200, "200"), (407, "407"), (599, "599"), (100, "100"), (None, "error"), (99, "other"), (600, "other"),
    (999999, "other"),
])
def test_status_label_is_a_real_http_code(status: int | None, label: str):
    assert status_label(status) == label


def label_values(admin: str) -> tuple[dict[str, set[str]], dict[frozenset[tuple[str, str]], float]]:
    """Every label's distinct values in /metrics, and the request counter by label set."""
    values: dict[str, set[str]] = defaultdict(set)
    counts: dict[frozenset[tuple[str, str]], float] = {}
    r = get(admin + "/metrics")
    assert r.status_code == 200
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            for name, value in sample.labels.items():
                if name != "le":  # histogram buckets: fixed by DURATION_BUCKETS
                    values[name].add(value)
            if sample.name == "gcp_auth_proxy_requests_total":
                counts[frozenset(sample.labels.items())] = sample.value
    return values, counts


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_made_up_hosts_do_not_grow_metric_labels(proxy_factory: ProxyFactory, fake: FakeGoogle):
    pp = proxy_factory("--admin-listen", "127.0.0.1:0", "--proxy-auth", "alice:s3cret-pass")
    pp.wait_for_line("token available")
    admin = admin_url(pp)
    rng = random.Random(9)
    n = 20

    def made_up(suffix: str) -> list[str]:
        return [f"h{rng.getrandbits(48):x}.{suffix}" for _ in range(n)]

    google, tunnelled, elsewhere = made_up("googleapis.com"), made_up("example.test"), made_up("evil.invalid")
    anonymous = requests.Session()
    anonymous.trust_env = False
    anonymous.proxies = {"http": pp.url, "https": pp.url}
    anonymous.verify = str(pp.ca_cert)
    for host in google + tunnelled + elsewhere:
        assert anonymous.get(f"http://{host}/echo", timeout=20).status_code == 407
        with pytest.raises(requests.exceptions.ProxyError):  # a 407 to the CONNECT
            anonymous.get(f"https://{host}/echo", timeout=20)
    signed_in = requests.Session()
    signed_in.trust_env = False
    proxy_url = pp.url.replace("http://", "http://alice:s3cret-pass@")
    signed_in.proxies = {"http": proxy_url, "https": proxy_url}
    for host in google:  # injected, but no service google_api.py knows
        assert signed_in.get(f"https://{host}/echo", verify=str(pp.ca_cert), timeout=20).status_code == 200
    for host in tunnelled:  # not injected: passed through untouched (the origin's certificate
        # names www.example.test only; the tunnel, not the certificate, is what this is about)
        assert signed_in.get(f"https://{host}/echo", verify=False, timeout=20).status_code == 200
    assert [q.host for q in fake.requests if q.server == "other"] == tunnelled

    values, counts = label_values(admin)
    assert values["host"] == {"*.googleapis.com", "other"}
    assert values["service"] <= SERVICES | {"other"}
    assert values["status"] <= {"200", "407", "error"}
    assert values["auth"] <= {"denied", "injected"}
    assert values["direction"] <= {"sent", "received"}
    assert len(counts) <= 4
    # Nothing was dropped to get there: every answered plain-HTTP 407 and injected call is counted.
    by_host: dict[str, float] = defaultdict(float)
    for labels, count in counts.items():
        by_host[dict(labels)["host"]] += count
    assert by_host == {"*.googleapis.com": 2 * n, "other": 2 * n}


def test_rule_decisions_are_counted_by_rule_and_routes_label_hosts(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                                   tmp_path):
    config = tmp_path / "policy.toml"
    config.write_text('''
default = "deny"

[[route]]
name = "service"
hosts = ["*.a.run.app"]
credential = { id_token = {} }

[[rule]]
name = "no-deletes"
action = "deny"
methods = ["DELETE"]

[[rule]]
name = "read-demo"
action = "allow"
api_methods = ["storage.objects.get"]
resources = ["projects/_/buckets/demo-bucket/objects/**"]
''')
    pp = proxy_factory("--admin-listen", "127.0.0.1:0", "--config", str(config),
                       "--resolve", "*.a.run.app={}:{}".format(*fake.run_addr))
    pp.wait_for_line("token available")
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": pp.url}
    s.verify = str(pp.ca_cert)
    obj = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt"
    assert [s.get(obj, timeout=20).status_code for _ in range(2)] == [200, 200]
    assert s.delete(obj, timeout=20).status_code == 403
    assert s.get("https://storage.googleapis.com/storage/v1/b/demo-bucket/o", timeout=20).status_code == 403
    assert s.get("https://hello-abc123.a.run.app/", timeout=20).status_code == 403  # no rule allows it
    with pytest.raises(requests.exceptions.ProxyError):  # a tunnel no rule allows
        s.get("https://www.example.test/", timeout=20)
    decisions = {}
    hosts_seen = set()
    for family in text_string_to_metric_families(get(admin_url(pp) + "/metrics").text):
        for sample in family.samples:
            if sample.name == "gcp_auth_proxy_rule_decisions_total":
                decisions[(sample.labels["rule"], sample.labels["action"])] = sample.value
            if sample.name == "gcp_auth_proxy_requests_total":
                hosts_seen.add(sample.labels["host"])
    assert decisions == {("read-demo", "allow"): 2, ("no-deletes", "deny"): 1, ("default", "deny"): 3}
    assert {"*.googleapis.com", "*.a.run.app"} <= hosts_seen  # the routes' patterns, not only --inject-host's
