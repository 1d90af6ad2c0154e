"""`run --isolate`: the child's only way out is the proxy; everything else fails at once.

Inside the child's network namespace there is only `lo`, with nothing but the forwarded proxy and
placeholder ports on it. Nothing here sends a packet off the machine: a connection to any address
but loopback fails with ENETUNREACH before anything is sent (no interface, no route).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fakegoogle import FakeGoogle
from proxy import isolate
from tests.proxyproc import ALL_OUTPUTS, ROOT
from tests.test_wrap import CHILD_WAITS_FOR_SIGNAL
from tests.wraphelp import run_command, run_wrapped, wrapped_env

HELLO = "hello from fake Google\n"
OBJECT_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media"

pytestmark = pytest.mark.skipif(isolate.supported() is not None, reason="run --isolate needs Linux")

# Run inside the fence: the proxy works, every other way out fails fast (each attempt timed).
FENCED_CLIENT = r"""
import errno, json, os, socket, sys, time
import requests

out = {}
r = requests.get(sys.argv[1], timeout=20)
out["via_proxy"] = [r.status_code, r.text]
md = os.environ["GCE_METADATA_HOST"]
r = requests.get(f"http://{md}/computeMetadata/v1/instance/service-accounts/default/email",
                 headers={"Metadata-Flavor": "Google"}, timeout=20)
out["placeholder"] = r.status_code

def attempt(name, fn):
    start = time.monotonic()
    try:
        fn()
        out[name] = ["reached", time.monotonic() - start]
    except OSError as e:
        out[name] = [errno.errorcode.get(e.errno, str(e.errno)), time.monotonic() - start]

host, port = sys.argv[2].rsplit(":", 1)
attempt("host_loopback", lambda: socket.create_connection((host, int(port)), timeout=10).close())
attempt("metadata", lambda: socket.create_connection(("169.254.169.254", 80), timeout=10).close())
def dns_query():
    # A DNS query to the system's own name server, as a resolver sends it (never answered here).
    servers = [line.split()[1] for line in open("/etc/resolv.conf") if line.startswith("nameserver")]
    server = servers[0] if servers else "127.0.0.53"
    with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.connect((server, 53))
        s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07storage\x0agoogleapis\x03com\x00\x00\x01\x00\x01")
        s.recv(512)

attempt("dns", dns_query)
# Through the C library: fails fast too, unless a local daemon answers over a Unix socket in the
# shared file system (systemd-resolved's nss-resolve, nscd); then its answer leads nowhere.
attempt("getaddrinfo", lambda: socket.getaddrinfo("storage.googleapis.com", 443))
attempt("direct_https", lambda: requests.Session().get(sys.argv[1], timeout=10, proxies={"https": None}))
print(json.dumps(out))
sys.exit(3)
"""


def test_python_client_works_through_the_proxy_and_nothing_else_gets_out(fake: FakeGoogle, tmp_path: Path) -> None:
    import json

    google = f"{fake.googleapis_addr[0]}:{fake.googleapis_addr[1]}"
    env = wrapped_env(fake, tmp_path)
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", FENCED_CLIENT, OBJECT_URL, google], "--isolate", env=env)
    assert out.returncode == 3, out.stderr  # the child's own status
    seen = json.loads(out.stdout)
    assert seen["via_proxy"] == [200, HELLO]
    assert seen["placeholder"] == 200  # the placeholder endpoint is forwarded too
    # The fake Google really listens on the host's 127.0.0.1: inside, that loopback is another one.
    assert seen["host_loopback"][0] == "ECONNREFUSED"
    assert seen["metadata"][0] == "ENETUNREACH"
    assert seen["dns"][0] in ("ENETUNREACH", "ECONNREFUSED")
    assert seen["direct_https"][0] != "reached"
    for name in ("host_loopback", "metadata", "dns", "getaddrinfo", "direct_https"):
        assert seen[name][1] < 2.0, (name, seen[name])  # refused or unreachable at once, not a hang


def test_curl_through_the_proxy_and_not_around_it(fake: FakeGoogle, tmp_path: Path) -> None:
    script = (f'curl -sS --fail-with-body "{OBJECT_URL}" && '
              f'if curl -sS --noproxy "*" --max-time 10 "{OBJECT_URL}"; then echo LEAKED; exit 1; fi')
    out = run_wrapped(fake, tmp_path, ["sh", "-c", script], "--isolate")
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO
    # (6): no name resolution inside; (7): a local resolver daemon answered, the connection failed
    assert "LEAKED" not in out.stdout and ("curl: (6)" in out.stderr or "curl: (7)" in out.stderr), out.stderr


def test_gsutil_isolated(fake: FakeGoogle, tmp_path: Path) -> None:
    if shutil.which("gsutil") is None:
        pytest.skip("gsutil is not installed on this machine")
    config, home = tmp_path / "gcloud", tmp_path / "home"
    config.mkdir()
    home.mkdir()
    env = wrapped_env(fake, tmp_path, CLOUDSDK_CONFIG=str(config), HOME=str(home),
                      CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
                      CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true")
    out = run_wrapped(fake, tmp_path, ["gsutil", "cat", "gs://demo-bucket/hello.txt"], "--isolate", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == HELLO


def test_exit_status_and_death_by_signal_pass_through(fake: FakeGoogle, tmp_path: Path) -> None:
    assert run_wrapped(fake, tmp_path, ["sh", "-c", "exit 7"], "--isolate").returncode == 7
    out = run_wrapped(fake, tmp_path, ["sh", "-c", "kill -TERM $$"], "--isolate")
    assert out.returncode == 143, out.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_reach_the_isolated_child(fake: FakeGoogle, tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [*run_command(fake, tmp_path, "--isolate"), "--", sys.executable, "-c", CHILD_WAITS_FOR_SIGNAL],
        env=wrapped_env(fake, tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rest == f"child got {sig.name}\n"
    assert proc.returncode == 5, err


def test_command_not_found_is_127_with_one_sentence(fake: FakeGoogle, tmp_path: Path) -> None:
    out = run_wrapped(fake, tmp_path, ["/nonexistent/tool"], "--isolate")
    assert out.returncode == 127
    assert out.stderr.strip() == "gcp-auth-proxy: cannot run /nonexistent/tool: command not found"


def test_nested_isolate_is_refused(fake: FakeGoogle, tmp_path: Path) -> None:
    inner = f"{sys.executable} -m proxy run --isolate -- true"
    out = run_wrapped(fake, tmp_path, ["sh", "-c", inner])
    assert out.returncode == 77
    assert "cannot take --isolate" in out.stderr


def launched(tmp_path: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a launcher that starts `run` itself; its output goes on the session-wide token check."""
    out = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    log = tmp_path / f"launched-{len(ALL_OUTPUTS)}.log"
    log.write_text(out.stdout + "\n" + out.stderr)
    ALL_OUTPUTS.append(log)
    return out


# Starts the program in a user namespace whose own limit on user namespaces is 0, as a kernel
# with unprivileged user namespaces switched off would refuse them.
NO_USER_NAMESPACES = r"""
import os, sys
uid, gid = os.getuid(), os.getgid()
os.unshare(os.CLONE_NEWUSER)
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"{uid} {uid} 1")
open("/proc/self/gid_map", "w").write(f"{gid} {gid} 1")
with open("/proc/sys/user/max_user_namespaces", "w") as f:
    f.write("0")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_a_kernel_that_refuses_user_namespaces_gives_69_and_names_the_sysctls(fake: FakeGoogle, tmp_path: Path) -> None:
    cmd = run_command(fake, tmp_path, "--isolate")
    out = launched(tmp_path, [sys.executable, "-c", NO_USER_NAMESPACES, *cmd[1:], "--", "true"],
                   wrapped_env(fake, tmp_path))
    if "Permission denied" in out.stderr and "max_user_namespaces" in out.stderr and out.returncode == 1:
        pytest.skip("this kernel does not let a user namespace lower its own limit")
    assert out.returncode == 69, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "kernel.unprivileged_userns_clone" in lines[0] and "user.max_user_namespaces" in lines[0]


# Starts the program as uid 1000 with no capability at all: a user namespace of its own whose uid
# 1000 is the caller's uid outside, entered by exec (exec under a non-zero uid drops every capability).
UNPRIVILEGED = r"""
import os, sys
uid, gid = os.getuid(), os.getgid()
os.unshare(os.CLONE_NEWUSER)
open("/proc/self/setgroups", "w").write("deny")
open("/proc/self/uid_map", "w").write(f"1000 {uid} 1")
open("/proc/self/gid_map", "w").write(f"1000 {gid} 1")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_needs_no_privilege(fake: FakeGoogle, tmp_path: Path) -> None:
    # The child prints its uid, then the capabilities of `run` itself (its parent process).
    script = f'id -u; grep CapEff /proc/$PPID/status; curl -sS --fail-with-body "{OBJECT_URL}"'
    cmd = run_command(fake, tmp_path, "--isolate")
    out = launched(tmp_path, [sys.executable, "-c", UNPRIVILEGED, *cmd[1:], "--", "sh", "-c", script],
                   wrapped_env(fake, tmp_path))
    assert out.returncode == 0, out.stderr
    uid, caps, body = out.stdout.split("\n", 2)
    assert uid == "1000"
    assert caps.split() == ["CapEff:", "0000000000000000"]
    assert body == HELLO
