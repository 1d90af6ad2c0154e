"""What may happen at all, through the real proxy: deny rules that real clients (gcloud,
google-cloud-storage, requests) report to their user, default deny as an egress allowlist,
SIGHUP reloads, and `policy suggest` drafting from a real run a policy that allows exactly it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from tests.audit_records import read_records
from tests.conftest import ProxyFactory
from tests.proxyproc import ROOT, base_env
from tests.test_clients_run import gcloud_env, needs
from tests.test_proxy_e2e import session_via
from tests.test_security_e2e import raw_exchange
from tests.wraphelp import run_wrapped

OBJECT_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt"
MEDIA_URL = OBJECT_URL + "?alt=media"
LIST_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o"

NO_READS = """
[[rule]]
name = "no-reading-demo"
action = "deny"
api_methods = ["storage.objects.get"]
resources = ["projects/_/buckets/demo-bucket/objects/**"]
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def upstream_paths(fake: FakeGoogle) -> list[str]:
    return [r.path for r in fake.requests if r.server == "googleapis"]


def test_a_denied_call_gets_a_google_style_403_and_never_leaves(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                                tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--config", str(write(tmp_path, NO_READS)), "--audit-log", str(audit))
    session = session_via(proxy)
    denied = session.get(MEDIA_URL, timeout=20)
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["status"] == "PERMISSION_DENIED" and "no-reading-demo" in error["message"]
    assert "storage.objects.get" in error["message"]
    assert not any(p.startswith("/storage/v1/b/demo-bucket/o/hello.txt") for p in upstream_paths(fake))
    assert session.get(LIST_URL, timeout=20).status_code == 200  # storage.objects.list: no rule, default allow
    records = read_records(audit)
    assert [(r["api_method"], r["auth"], r["rule"]) for r in records] == [
        ("storage.objects.get", "denied", "no-reading-demo"), ("storage.objects.list", "injected", None)]


def test_gcloud_shows_the_rule_to_its_user(fake: FakeGoogle, tmp_path: Path) -> None:
    needs("gcloud")
    out = run_wrapped(fake, tmp_path, ["gcloud", "storage", "cat", "gs://demo-bucket/hello.txt"],
                      "--config", str(write(tmp_path, NO_READS)), env=gcloud_env(fake, tmp_path))
    assert out.returncode != 0
    assert "no-reading-demo" in out.stderr, out.stderr
    assert "hello from fake Google" not in out.stdout


def test_gsutil_is_refused_by_the_rule(fake: FakeGoogle, tmp_path: Path) -> None:
    """gsutil gets the same 403, but words it itself: on any 403 while its credentials came from a
    metadata server it says "no configured credentials" (README: Routes and rules)."""
    needs("gsutil")
    audit = tmp_path / "audit.jsonl"
    out = run_wrapped(fake, tmp_path, ["gsutil", "cat", "gs://demo-bucket/hello.txt"],
                      "--config", str(write(tmp_path, NO_READS)), "--audit-log", str(audit),
                      env=gcloud_env(fake, tmp_path))
    assert out.returncode != 0 and "hello from fake Google" not in out.stdout
    denied = [r for r in read_records(audit) if r["auth"] == "denied" and r["host"] == "storage.googleapis.com"]
    assert denied and {r["rule"] for r in denied} == {"no-reading-demo"}
    # gsutil also probes the metadata server with a CONNECT: refused by the host policy, on record too
    probes = [r for r in read_records(audit) if r["method"] == "CONNECT"]
    assert all(r["auth"] == "denied" and r["rule"] is None for r in probes)


STORAGE_READ = """
from google.cloud import storage
from google.api_core import exceptions
try:
    storage.Client().bucket("demo-bucket").blob("hello.txt").download_as_text()
except exceptions.Forbidden as e:
    print("FORBIDDEN", e.message)
"""


def test_google_cloud_storage_shows_the_rule(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", STORAGE_READ], "--config", str(write(tmp_path, NO_READS)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("FORBIDDEN") and "no-reading-demo" in out.stdout, out.stdout


def test_default_deny_is_an_egress_allowlist(proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path) -> None:
    config = write(tmp_path, """
default = "deny"

[[rule]]
name = "read-demo"
action = "allow"
api_methods = ["storage.objects.get", "storage.objects.list"]
resources = ["projects/_/buckets/demo-bucket", "projects/_/buckets/demo-bucket/objects/**"]
""")
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--config", str(config), "--audit-log", str(audit))
    session = session_via(proxy)
    assert session.get(MEDIA_URL, timeout=20).status_code == 200
    assert session.get(LIST_URL, timeout=20).status_code == 200
    deleted = session.delete(OBJECT_URL, timeout=20)
    assert deleted.status_code == 403 and "default is deny" in deleted.json()["error"]["message"]
    other = session.get("https://storage.googleapis.com/storage/v1/b/other-bucket/o", timeout=20)
    assert other.status_code == 403
    # A tunnel to a host no route injects for is refused at CONNECT: nothing reaches it.
    tunnelled = session_via(proxy, verify=str(fake.other_ca_pem))
    with pytest.raises(Exception, match="403"):
        tunnelled.get("https://www.example.test/", timeout=20)
    assert not [r for r in fake.requests if r.server == "other"]
    refused = [r for r in read_records(audit) if r["method"] == "CONNECT"]
    assert [(r["host"], r["auth"], r["status"], r["rule"]) for r in refused] == [("www.example.test", "denied", 403, None)]


def test_a_host_rule_opens_the_tunnel_on_its_ports_only(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                         tmp_path: Path) -> None:
    config = write(tmp_path, """
default = "deny"

[[rule]]
name = "example-egress"
action = "allow"
hosts = ["www.example.test"]
ports = [443]
""")
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--config", str(config), "--audit-log", str(audit))
    answer = session_via(proxy, verify=str(fake.other_ca_pem)).get("https://www.example.test/", timeout=20)
    assert answer.status_code < 500
    reached = len([r for r in fake.requests if r.server == "other"])
    assert reached
    # The same host on another port (an SSH tunnel, say) is not what the rule allows.
    refused = raw_exchange(proxy, b"CONNECT www.example.test:22 HTTP/1.1\r\nHost: www.example.test:22\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 403"), refused[:200]
    assert b"no rule allows a tunnel at www.example.test:22" in refused
    assert len([r for r in fake.requests if r.server == "other"]) == reached
    [record] = [r for r in read_records(audit) if r["method"] == "CONNECT"]
    assert (record["host"], record["auth"], record["status"]) == ("www.example.test", "denied", 403)


def test_rules_per_proxy_user(proxy_factory: ProxyFactory, fake: FakeGoogle, tmp_path: Path) -> None:
    from tests.test_routes_e2e import sha_entry

    htpasswd = write(tmp_path, sha_entry("reader", "r") + "\n" + sha_entry("ops", "o") + "\n", "htpasswd")
    config = write(tmp_path, """
[[rule]]
name = "readers-only-read"
action = "deny"
proxy_users = ["reader"]
methods = ["DELETE", "POST", "PUT", "PATCH"]
""")
    proxy = proxy_factory("--config", str(config), "--proxy-auth", f"@{htpasswd}")
    results = {}
    for user, password in (("reader", "r"), ("ops", "o")):
        session = session_via(proxy)
        session.proxies = {"https": f"http://{user}:{password}@127.0.0.1:{proxy.port}"}
        results[user] = session.delete("https://storage.googleapis.com/storage/v1/b/demo-bucket/o/nothing.txt",
                                        timeout=20).status_code
    assert results["reader"] == 403 and results["ops"] != 403


def test_sighup_reloads_rules_and_a_bad_reload_keeps_them(proxy_process_factory, fake: FakeGoogle,
                                                          tmp_path: Path) -> None:
    config = write(tmp_path, "# nothing yet\n")
    proxy = proxy_process_factory("--config", str(config))
    session = session_via(proxy)
    assert session.get(MEDIA_URL, timeout=20).status_code == 200
    config.write_text(NO_READS)
    proxy.proc.send_signal(signal.SIGHUP)
    proxy.wait_for_line("reloaded routes and rules")
    assert session.get(MEDIA_URL, timeout=20).status_code == 403
    config.write_text(NO_READS + '\n[[rule]]\nname = "typo"\naction = "alow"\n')
    proxy.proc.send_signal(signal.SIGHUP)
    line = proxy.wait_for_line("config reload failed")
    assert f"{config}:" in line and "alow" in line
    assert session.get(MEDIA_URL, timeout=20).status_code == 403  # the old rules still hold
    assert proxy.proc.poll() is None


def test_policy_suggest_drafts_a_policy_that_allows_exactly_the_run(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                                    tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    proxy = proxy_factory("--audit-log", str(audit))
    session = session_via(proxy)
    for url in (LIST_URL, MEDIA_URL, "https://storage.googleapis.com/storage/v1/b/demo-bucket"):
        assert session.get(url, timeout=20).status_code == 200
    proxy.stop()
    out = subprocess.run([sys.executable, "-m", "proxy", "policy", "suggest", str(audit)], cwd=ROOT,
                         env=base_env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "storage.objects.get" in out.stdout and "# " in out.stdout  # the permissions, as comments
    suggested = write(tmp_path, out.stdout, "suggested.toml")
    fake.clear_requests()
    proxy = proxy_factory("--config", str(suggested))
    session = session_via(proxy)
    for url in (LIST_URL, MEDIA_URL, "https://storage.googleapis.com/storage/v1/b/demo-bucket"):
        assert session.get(url, timeout=20).status_code == 200, url
    assert session.delete(OBJECT_URL, timeout=20).status_code == 403
    assert session.get("https://storage.googleapis.com/storage/v1/b?project=fake-project", timeout=20).status_code == 403


def test_a_denied_grpc_call_gets_permission_denied_with_the_rule(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                                 tmp_path: Path) -> None:
    import grpc

    from tests.test_grpc import ECHO, PUBSUB, WAIT

    config = write(tmp_path, f"""
[[rule]]
name = "no-pubsub"
action = "deny"
hosts = ["{PUBSUB}"]
methods = ["POST"]
""")
    proxy = proxy_factory("--config", str(config))
    credentials = grpc.ssl_channel_credentials(proxy.ca_cert.read_bytes())
    with (grpc.secure_channel(f"{PUBSUB}:443", credentials, options=[("grpc.http_proxy", proxy.url)]) as channel,
          pytest.raises(grpc.RpcError) as raised):
        channel.unary_unary(ECHO + "Unary")(b"hello", timeout=WAIT)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "no-pubsub" in raised.value.details()
    assert not [r for r in fake.requests if r.server == "pubsub"]  # nothing went upstream
