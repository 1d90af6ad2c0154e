"""Admin endpoints (/healthz, /readyz, /metrics) on the real proxy process."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from fakegoogle import FakeGoogle
from proxy import settings
from proxy.errors import ProxyError
from tests.proxyproc import ProxyProcess

_ADMIN = re.compile(r"admin endpoints on http://127\.0\.0\.1:(\d+)")


ADC = frozenset({("credential", "adc")})  # the token metrics' label for the ADC source


def admin_url(pp: ProxyProcess) -> str:
    match = _ADMIN.search(pp.wait_for_line("admin endpoints on"))
    assert match
    return f"http://127.0.0.1:{match.group(1)}"


def get(url: str) -> requests.Response:
    s = requests.Session()
    s.trust_env = False
    return s.get(url, timeout=20)


def via(pp: ProxyProcess) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": pp.url}
    s.verify = str(pp.ca_cert)
    return s


def samples(admin: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics, parsed as Prometheus text: (name, labels) -> value."""
    r = get(admin + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def wait_until_ready(admin: str, timeout: float = 60.0) -> requests.Response:
    """Poll /readyz (a condition with a deadline): recovery waits out the token backoff."""
    deadline = time.monotonic() + timeout
    while True:
        r = get(admin + "/readyz")
        if r.status_code == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


@pytest.fixture
def admin_proxy(proxy_factory: Any) -> tuple[ProxyProcess, str]:
    pp = proxy_factory("--admin-listen", "127.0.0.1:0")
    pp.wait_for_line("token available")
    return pp, admin_url(pp)


def test_healthz_and_readyz_when_a_token_is_cached(admin_proxy: tuple[ProxyProcess, str]):
    _pp, admin = admin_proxy
    assert get(admin + "/healthz").json() == {"status": "ok"}
    ready = get(admin + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["token_id"].startswith("sha256:")
    assert get(admin + "/nope").status_code == 404


def test_metrics_count_what_was_sent(admin_proxy: tuple[ProxyProcess, str], fake: FakeGoogle):
    pp, admin = admin_proxy
    s = via(pp)
    for _ in range(3):
        assert s.get("https://storage.googleapis.com/storage/v1/b/demo-bucket/o", timeout=20).status_code == 200
    assert s.get("https://compute.googleapis.com/compute/v1/projects/p/zones/nowhere", timeout=20).status_code == 404
    body = b"u" * 5000
    assert s.post("https://storage.googleapis.com/upload/storage/v1/b/demo-bucket/o?uploadType=media&name=m",
                  data=body, timeout=20).status_code == 200
    m = samples(admin)

    def value(name: str, **labels: str) -> float:
        return m.get((name, frozenset(labels.items())), 0.0)

    ok = {"host": "*.googleapis.com", "service": "storage", "status": "200", "auth": "injected"}
    assert value("gcp_auth_proxy_requests_total", **ok) == 4  # host: the --inject-host pattern it matched
    assert value("gcp_auth_proxy_requests_total", host="*.googleapis.com", service="compute",
                 status="404", auth="injected") == 1
    assert value("gcp_auth_proxy_request_duration_seconds_count", service="storage") == 4
    assert value("gcp_auth_proxy_body_bytes_total", service="storage", direction="sent") == len(body)
    assert value("gcp_auth_proxy_body_bytes_total", service="storage", direction="received") > 0
    assert value("gcp_auth_proxy_token_refreshes_total", credential="adc") == 1
    assert value("gcp_auth_proxy_token_refresh_failures_total", credential="adc") == 0
    assert 3000 < value("gcp_auth_proxy_token_expiry_seconds", credential="adc") <= 3600
    assert value("gcp_auth_proxy_token_usable", credential="adc") == 1
    assert value("gcp_auth_proxy_audit_log_writable") == 1
    assert value("gcp_auth_proxy_active_connections") >= 1  # this session's tunnel is still open
    s.close()


def test_readyz_flips_when_the_token_endpoint_fails_and_recovers(proxy_factory: Any, fake: FakeGoogle):
    fake.set_token_failure("500")
    pp = proxy_factory("--admin-listen", "127.0.0.1:0")
    admin = admin_url(pp)
    pp.wait_for_line("token unavailable")
    r = get(admin + "/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and "token endpoint" in r.json()["reason"]
    assert get(admin + "/healthz").status_code == 200  # alive, just not ready
    failures = samples(admin)[("gcp_auth_proxy_token_refresh_failures_total", ADC)]
    assert failures >= 1
    fake.set_token_failure(None)
    r = wait_until_ready(admin)
    assert r.status_code == 200, r.text
    pp.wait_for_line("token available again")
    assert samples(admin)[("gcp_auth_proxy_token_usable", ADC)] == 1


def test_readyz_reports_a_broken_audit_log(proxy_factory: Any):
    pp = proxy_factory("--admin-listen", "127.0.0.1:0", "--audit-log", "/dev/full")
    pp.wait_for_line("token available")
    admin = admin_url(pp)
    # The first call went upstream and could not be recorded: its streamed answer is cut off.
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        via(pp).get("https://storage.googleapis.com/echo", timeout=20)
    assert via(pp).get("https://storage.googleapis.com/echo", timeout=20).status_code == 503
    r = get(admin + "/readyz")
    assert r.status_code == 503 and "audit log" in r.json()["reason"]
    assert samples(admin)[("gcp_auth_proxy_audit_log_writable", frozenset())] == 0


def test_admin_port_in_use_is_a_startup_error(proxy_process_factory: Any, admin_proxy: tuple[ProxyProcess, str]):
    _pp, admin = admin_proxy
    taken = admin.rsplit(":", 1)[1]
    pp = proxy_process_factory("--admin-listen", f"127.0.0.1:{taken}", expect_listen=False)
    assert pp.proc.wait(timeout=60) != 0
    pp.wait_for_line("admin endpoints")  # returns once the line is there or the output closed
    assert "cannot listen on" in pp.text() and "Traceback" not in pp.text()


@pytest.mark.parametrize(("value", "proxy_auth", "ok"), [
    ("127.0.0.1:9090", None, True),
    ("[::1]:9090", None, True),
    ("localhost:0", None, True),
    ("0.0.0.0:9090", None, False),
    ("10.1.2.3:9090", None, False),
    ("0.0.0.0:9090", "user:pass", True),
    ("9090", None, False),
    ("127.0.0.1:70000", None, False),
])
def test_admin_listen_is_loopback_unless_proxy_auth(value: str, proxy_auth: str | None, ok: bool):
    flags = {"admin_listen": value, "proxy_auth": proxy_auth}
    if ok:
        assert settings.from_sources(flags, environ={}).admin_listen == value
    else:
        with pytest.raises(ProxyError, match="admin"):
            settings.from_sources(flags, environ={})


TARGET = "ready-target@fake-project.iam.gserviceaccount.com"


def test_readyz_needs_a_token_from_every_credential_the_routes_name(proxy_factory: Any, fake: FakeGoogle):
    """With impersonation, the ADC token alone is not enough to serve: IAM must let it through."""
    fake.add_service_account(TARGET)  # exists; nobody may impersonate it yet
    pp = proxy_factory("--admin-listen", "127.0.0.1:0", "--impersonate-service-account", TARGET,
                       "--id-token-host", "*.a.run.app", "--id-token-host", "hello.a.run.app")
    pp.wait_for_line("token available")
    admin = admin_url(pp)
    refused = get(admin + "/readyz")
    assert refused.status_code == 503, refused.text
    reason = refused.json()["reason"]
    assert reason.startswith("route ") and TARGET in reason and "roles/iam.serviceAccountTokenCreator" in reason
    fake.grant_token_creator("demo-sa@fake-project.iam.gserviceaccount.com", TARGET)
    ready = wait_until_ready(admin)
    assert ready.status_code == 200, ready.text
    routes = ready.json()["routes"]
    # the exact host's ID token and the impersonated access token; the wildcard's audience is per host
    assert set(routes) == {"--id-token-host hello.a.run.app", "--inject-host *.googleapis.com"}
    assert all(fp.startswith("sha256:") for fp in routes.values())
    assert routes["--inject-host *.googleapis.com"] != ready.json()["token_id"]  # not the ADC token
    # Token metrics per credential: ADC, the impersonation (its refusals counted), the ID tokens.
    m = samples(admin)
    impersonated = frozenset({("credential", f"impersonate {TARGET}")})
    assert m[("gcp_auth_proxy_token_usable", ADC)] == m[("gcp_auth_proxy_token_usable", impersonated)] == 1
    assert m[("gcp_auth_proxy_token_refreshes_total", impersonated)] == 1
    assert m[("gcp_auth_proxy_token_refresh_failures_total", impersonated)] >= 1
    credentials = {dict(labels)["credential"] for name, labels in m if name == "gcp_auth_proxy_token_usable"}
    assert credentials == {"adc", f"impersonate {TARGET}", f"ID token for audience https://HOST as {TARGET}"}
