"""Same user only on loopback, end to end: real proxies, real clients running as another uid.

The tests run as root; "another user" is uid 65534 (nobody): curl started with
``subprocess.Popen(user=65534)``, so its sockets are nobody's. For the proxy itself running as
another user, ``setpriv`` starts it as 65534, keeping only CAP_DAC_READ_SEARCH so it can read
the interpreter and the test's files under /root and /tmp/pytest-of-root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from addons import same_user
from addons.same_user import REFUSAL, Gate, parse_allow_uid
from fakegoogle import FakeGoogle
from proxy import placeholder
from tests.proxyproc import ALL_OUTPUTS, ROOT, ProxyProcess, base_env, proxy_args
from tests.test_admin import admin_url, samples
from tests.wraphelp import run_wrapped

NOBODY = 65534
OBJECT_PATH = "/storage/v1/b/demo-bucket/o/hello.txt"
OBJECT = "storage.googleapis.com" + OBJECT_PATH

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the owner lookup is Linux only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run clients as another user"),
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
]


def curl(*args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """curl with a clean environment, as ``uid`` (default: this process's own)."""
    who: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
    return subprocess.run(["curl", "-sS", "-m", "20", *args], check=False, env=base_env(), capture_output=True,
                          text=True, timeout=60, cwd="/", **who)


def status_via(proxy_url: str, url: str, uid: int | None = None) -> str:
    """The status a plain-HTTP request through the proxy got ('000' when none)."""
    return curl("-o", "/dev/null", "-w", "%{http_code}", "-x", proxy_url, url, uid=uid).stdout


def refused_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "refused a connection to the" in line]


# -- serve: the proxy port and the admin endpoints ----------------------------------------------------

def test_serve_refuses_another_users_connections(proxy_factory: Any, fake: FakeGoogle):
    pp = proxy_factory("--admin-listen", "127.0.0.1:0")
    admin = admin_url(pp)
    pp.wait_for_line("token available")
    assert status_via(pp.url, f"http://{OBJECT}", uid=NOBODY) == "403"  # a plain request: a bare 403
    tunnel = curl("-o", "/dev/null", "-x", pp.url, f"https://{OBJECT}", uid=NOBODY)
    assert tunnel.returncode == 56 and "CONNECT tunnel failed, response 403" in tunnel.stderr
    assert curl("-o", "/dev/null", "-w", "%{http_code}", admin + "/healthz", uid=NOBODY).stdout == "403"
    # The proxy's own user is served as before, on both ports.
    assert status_via(pp.url, f"http://{OBJECT}") == "200"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", admin + "/healthz").stdout == "200"
    metrics = samples(admin)
    assert metrics[("gcp_auth_proxy_foreign_connections_refused_total", frozenset({("uid", "65534")}))] == 3
    # One line per uid per minute, however many connections: the proxy port's and the admin's share it.
    lines = refused_lines(pp.text())
    assert len(lines) == 1 and "uid 65534" in lines[0] and "--allow-uid 65534" in lines[0]
    # Only the owner's request reached Google: nobody's plain request was refused before forwarding.
    assert [r.path for r in fake.requests if r.host == "storage.googleapis.com"] == [OBJECT_PATH]


def test_serve_with_allow_uid_admits_that_user(proxy_factory: Any):
    pp = proxy_factory("--admin-listen", "127.0.0.1:0", "--allow-uid", str(NOBODY))
    admin = admin_url(pp)
    assert status_via(pp.url, f"http://{OBJECT}", uid=NOBODY) == "200"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", admin + "/healthz", uid=NOBODY).stdout == "200"
    assert status_via(pp.url, f"http://{OBJECT}") == "200"
    assert not refused_lines(pp.text())


def test_serve_with_allow_uid_any_admits_everyone(proxy_factory: Any):
    pp = proxy_factory("--allow-uid", "any")
    assert status_via(pp.url, f"http://{OBJECT}", uid=NOBODY) == "200"


BIG_POST = (b"POST http://x.test/upload HTTP/1.1\r\nHost: x.test\r\ncontent-length: 200000\r\n\r\n"
            + b"x" * 200_000)
REQUESTS = (
    b"GET http://x.test/ HTTP/1.1\r\nHost: x.test\r\n\r\n",
    b"CONNECT storage.googleapis.com:443 HTTP/1.1\r\nHost: storage.googleapis.com:443\r\n\r\n",
    BIG_POST,  # bytes the refusal never reads: closing on them unread would reset the connection
)


def test_a_refused_client_reads_the_403_and_then_the_end():
    """The refusal is the whole answer: a bare 403, then the end of the stream, never a reset
    (our own asyncio servers' path; a gate "owned" by nobody refuses this root client)."""
    gate = Gate(parse_allow_uid([]), own_uid=NOBODY)
    assert asyncio.run(_through_gate(gate)) == [REFUSAL] * len(REQUESTS)
    assert gate.refusals == {"0": len(REQUESTS)} and gate.lingering == 0


async def _through_gate(gate: Gate) -> list[bytes]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await same_user.admit_stream(gate, reader, writer, "test endpoint"):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = []
    for request in REQUESTS:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        out.append(await asyncio.wait_for(reader.read(), 10))  # read() returns at EOF only
        writer.close()
    server.close()
    await server.wait_closed()
    return out


# -- run: the placeholder metadata endpoint --------------------------------------------------------------

CHILD = f"""
import json, os, subprocess, urllib.request
url = "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/project/numeric-project-id"
req = urllib.request.Request(url, headers={{"Metadata-Flavor": "Google"}})
own = urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open(req, timeout=20).status
other = subprocess.run(["curl", "-s", "-m", "20", "-o", "/dev/null", "-w", "%{{http_code}}",
                        "-H", "Metadata-Flavor: Google", url], user={NOBODY}, group={NOBODY},
                       extra_groups=[], capture_output=True, text=True, cwd="/").stdout
print(json.dumps({{"own": own, "other": other}}))
"""


def test_run_placeholder_endpoint_refuses_another_user(fake: FakeGoogle, tmp_path: Path):
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", CHILD])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"own": 200, "other": "403"}


def test_placeholder_endpoint_with_allow_uid_admits_that_user():
    async def scenario() -> tuple[str, str]:
        identity = placeholder.Identity(placeholder.new_placeholder())
        statuses = []
        for allow in ([], [str(NOBODY)]):
            server = await placeholder.serve_metadata(identity, gate=Gate(parse_allow_uid(allow)))
            url = f"http://{placeholder.server_address(server)}/computeMetadata/v1/project/numeric-project-id"
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "-m", "20", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Metadata-Flavor: Google",
                url, user=NOBODY, group=NOBODY, extra_groups=[], stdout=subprocess.PIPE, cwd="/")
            stdout, _ = await proc.communicate()
            statuses.append(stdout.decode())
            server.close()
            await server.wait_closed()
        return statuses[0], statuses[1]

    assert asyncio.run(scenario()) == ("403", "200")


# -- the proxy running as another user: root is refused unless named ------------------------------------------

@pytest.fixture
def nobody_proxy(fake: FakeGoogle, tmp_path: Path) -> Iterator[Any]:
    """``serve`` as uid 65534 (only CAP_DAC_READ_SEARCH kept: reading /root's interpreter)."""
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv to run the proxy as another user")
    started: list[ProxyProcess] = []

    def start(*extra: str) -> ProxyProcess:
        confdir = tmp_path / f"confdir{len(started)}"
        confdir.mkdir(mode=0o700)
        os.chown(confdir, NOBODY, NOBODY)
        output = tmp_path / f"nobody{len(started)}.log"
        env = base_env(GOOGLE_APPLICATION_CREDENTIALS=str(fake.write_service_account_key(tmp_path / "sa.json")))
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                sys.executable, "-m", "proxy", "serve", *proxy_args(fake, confdir, *extra)]
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        pp = ProxyProcess(proc, "127.0.0.1", 0, confdir, output)
        ALL_OUTPUTS.append(output)

        def pump() -> None:
            assert proc.stdout is not None
            with output.open("wb") as out:
                for raw in proc.stdout:
                    out.write(raw)
                    out.flush()
                    pp._add_line(raw.decode(errors="replace"))
            pp._close_output()

        pp._reader = threading.Thread(target=pump, daemon=True)
        pp._reader.start()
        line = pp.wait_for_line("listening on", 30)
        pp.port = int(line.rsplit("127.0.0.1:", 1)[1].split(";")[0])
        started.append(pp)
        return pp

    yield start
    for pp in started:
        pp.stop()


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_root_is_refused_by_a_proxy_of_another_user_unless_named(nobody_proxy: Any):
    pp = nobody_proxy()
    for request in REQUESTS:  # a plain request, a CONNECT (answered, then closed), a body never read
        assert _raw(pp.port, request) == REFUSAL
    assert status_via(pp.url, f"http://{OBJECT}", uid=NOBODY) == "200"  # its own user
    lines = refused_lines(pp.wait_for_line("refused a connection to the proxy port"))
    assert "uid 0, not this proxy's uid 65534" in lines[0]

    named = nobody_proxy("--allow-uid", "0")
    assert status_via(named.url, f"http://{OBJECT}") == "200"
    assert status_via(named.url, f"http://{OBJECT}", uid=NOBODY) == "200"
