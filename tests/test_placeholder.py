"""Placeholder credentials: the metadata endpoint's answers, the stripping addon, and end to end."""

from __future__ import annotations

import base64
import json
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons import default_addons
from addons.google_auth import GoogleAuth
from addons.placeholder import PLACEHOLDER_PREFIX, PlaceholderAuth, contains_placeholder
from fakegoogle import FakeGoogle
from proxy import placeholder
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess, base_env
from tests.wraphelp import run_wrapped

TOKEN = placeholder.new_placeholder()
IDENTITY = placeholder.Identity(TOKEN, project_id="p-1")
FLAVOR = {"metadata-flavor": "Google"}
SA = "/computeMetadata/v1/instance/service-accounts/"


# -- the metadata endpoint's answers (pure) --------------------------------------------------------

@pytest.mark.parametrize(
    ("method", "target", "headers", "status", "body"),
    [
        ("GET", "/", {}, 200, "computeMetadata/\n"),  # google-auth's ping
        ("GET", SA + "default/token", {}, 403, None),  # the flavor header is required
        ("GET", SA + "default/token", {"metadata-flavor": "other"}, 403, None),
        ("GET", SA + "default/token", {**FLAVOR, "x-forwarded-for": "1.2.3.4"}, 403, None),
        ("POST", SA + "default/token", FLAVOR, 405, None),
        ("GET", SA + "default/email", FLAVOR, 200, placeholder.PLACEHOLDER_EMAIL),
        ("GET", SA + f"{placeholder.PLACEHOLDER_EMAIL}/email", FLAVOR, 200, placeholder.PLACEHOLDER_EMAIL),
        ("GET", SA + "other@x/email", FLAVOR, 404, None),
        ("GET", "/computeMetadata/v1/project/project-id", FLAVOR, 200, "p-1"),
        ("GET", "/computeMetadata/v1/project/numeric-project-id", FLAVOR, 200, "0"),
        ("GET", "/computeMetadata/v1/universe/universe-domain", FLAVOR, 200, "googleapis.com"),
        ("GET", SA, FLAVOR, 200, f"default/\n{placeholder.PLACEHOLDER_EMAIL}/\n"),
        ("GET", SA.rstrip("/"), FLAVOR, 200, f"default/\n{placeholder.PLACEHOLDER_EMAIL}/\n"),
        ("GET", "/computeMetadata/v1/instance/attributes/ssh-keys", FLAVOR, 404, None),
        ("GET", "/other", FLAVOR, 404, None),
    ],
)
def test_metadata_answers(method: str, target: str, headers: dict[str, str], status: int, body: str | None) -> None:
    reply = placeholder.answer(method, target, headers, IDENTITY)
    assert reply.status == status
    if body is not None:
        assert reply.body == body


def test_token_answer_is_the_placeholder() -> None:
    reply = placeholder.answer("GET", SA + "default/token?scopes=a,b", FLAVOR, IDENTITY)
    data = json.loads(reply.body)
    assert data == {"access_token": TOKEN, "expires_in": placeholder.PLACEHOLDER_LIFETIME, "token_type": "Bearer"}


def test_recursive_service_account() -> None:
    reply = placeholder.answer("GET", SA + "default/?recursive=true", FLAVOR, IDENTITY)
    assert json.loads(reply.body)["email"] == placeholder.PLACEHOLDER_EMAIL


def test_unknown_project_is_404() -> None:
    reply = placeholder.answer("GET", "/computeMetadata/v1/project/project-id", FLAVOR, placeholder.Identity(TOKEN))
    assert reply.status == 404


def test_placeholders_are_random_and_prefixed() -> None:
    a, b = placeholder.new_placeholder(), placeholder.new_placeholder()
    assert a != b and a.startswith(PLACEHOLDER_PREFIX) and len(a) > 40


@pytest.mark.parametrize(
    ("environ", "key", "expected"),
    [
        ({"GOOGLE_CLOUD_PROJECT": "a"}, None, "a"),
        ({"CLOUDSDK_CORE_PROJECT": "b"}, None, "b"),
        ({}, {"project_id": "c"}, "c"),
        ({}, {"quota_project_id": "d"}, "d"),
        ({}, {"type": "authorized_user"}, None),
        ({}, None, None),
    ],
)
def test_default_project(tmp_path: Path, environ: dict[str, str], key: dict[str, str] | None,
                         expected: str | None) -> None:
    if key is not None:
        (tmp_path / "k.json").write_text(json.dumps(key))
        environ = {**environ, "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "k.json")}
    assert placeholder.default_project(environ) == expected


# -- the addon ---------------------------------------------------------------------------------------

CUSTOM = "a-configured-placeholder-without-the-prefix-0123456789"  # `--set placeholder_tokens=`


def b64(text: str, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(text.encode()).decode()


HOSTILE_SPELLINGS = {  # test id: (header value or query parameter, carries a placeholder)
    "bearer": (f"Bearer {TOKEN}", True),
    "lower-case": (f"bearer {TOKEN}", True),
    "odd-case": (f"bEaReR {TOKEN}", True),
    "tab": (f"Bearer\t{TOKEN}", True),
    "spaces": (f"Bearer     {TOKEN}  ", True),
    "no-scheme": (TOKEN, True),
    "other-scheme": (f"Basic {TOKEN}", True),
    "comma-joined": (f"Bearer ya29.real, Bearer {TOKEN}", True),
    "cookie": (f"session=1; tok={TOKEN}; theme=dark", True),
    "query": (f"access_token={TOKEN}", True),
    "json": (f'{{"token": "{TOKEN}"}}', True),
    "glued": (f"Bearer x{TOKEN}", True),  # the placeholder is still in it
    "upper-case": (f"Bearer {TOKEN.upper()}", True),
    "earlier-run": (f"Bearer {PLACEHOLDER_PREFIX}from-an-earlier-run-cached-by-gsutil", True),
    "basic-offset-0": ("Basic " + b64(f"oauth2accesstoken:{TOKEN}"), True),  # base64 at each offset
    "basic-offset-1": ("Basic " + b64(f"abc:{TOKEN}"), True),
    "basic-offset-2": ("Basic " + b64(f"u:{TOKEN}"), True),
    "docker-registry-auth": (b64(json.dumps({"username": "oauth2accesstoken", "password": TOKEN}), urlsafe=True), True),
    "configured-exact": (CUSTOM, True),  # a configured placeholder, as a whole token
    "configured-bearer": (f"Bearer {CUSTOM}", True),
    "configured-in-cookie": (f"k={CUSTOM};", True),
    "real-token": ("Bearer ya29.real-looking", False),
    "real-basic": ("Basic " + b64("user:password"), False),
    "prefix-cut-short": ("gcp-auth-proxy-placeholde", False),
    "configured-cut-short": (CUSTOM[:-1], False),
    "configured-longer": (CUSTOM + "x", False),  # another token; run's placeholders all carry the prefix
    "empty": ("", False),
}


@pytest.mark.parametrize(("value", "expected"), HOSTILE_SPELLINGS.values(), ids=HOSTILE_SPELLINGS.keys())
def test_contains_placeholder(value: str, expected: bool) -> None:
    assert contains_placeholder(value.encode(), [TOKEN.encode(), CUSTOM.encode()]) is expected


def test_addon_strips_placeholder_and_keeps_other_headers() -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, placeholder_tokens=[TOKEN])
        flow = tflow.tflow()
        flow.request.headers["authorization"] = f"Bearer {TOKEN}"
        flow.request.headers["x-goog-user-project"] = "q"
        addon.requestheaders(flow)
        assert "authorization" not in flow.request.headers
        assert flow.request.headers["x-goog-user-project"] == "q"
        assert flow.metadata["gauth"]["placeholder"] is True


def test_addon_strips_every_header_and_parameter_carrying_a_placeholder() -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, placeholder_tokens=[TOKEN, CUSTOM])
        flow = tflow.tflow()
        flow.request.path = (f"/p?access_token={TOKEN}&keep=1&key=%67cp-auth-proxy-placeholder.x"
                             f"&{CUSTOM}&alt=media")
        flow.request.headers.fields = (
            (b"authorization", f"Bearer\t{TOKEN}".encode()),
            (b"authorization", b"Bearer ya29.client-own"),
            (b"x-goog-iam-authorization-token", TOKEN.encode()),
            (b"x-serverless-authorization", f"bEaReR   {CUSTOM}".encode()),
            (b"proxy-authorization", ("Basic " + b64(f"oauth2accesstoken:{TOKEN}")).encode()),
            (b"x-custom", f"a, Bearer {TOKEN}".encode()),
            (b"cookie", f"session=1; tok={TOKEN}".encode()),
            (b"cookie", b"theme=dark"),
            (b"x-goog-user-project", b"q"),
        )
        addon.requestheaders(flow)
        assert flow.request.headers.fields == (
            (b"authorization", b"Bearer ya29.client-own"), (b"cookie", b"theme=dark"), (b"x-goog-user-project", b"q"),
        )
        assert list(flow.request.query.items(multi=True)) == [("keep", "1"), ("alt", "media")]
        assert flow.metadata["gauth"]["placeholder"] is True


def test_addon_keeps_a_real_client_token() -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, placeholder_tokens=[TOKEN])
        flow = tflow.tflow()
        flow.request.path = "/p?access_token=ya29.client-own&b=%2F"
        flow.request.headers["authorization"] = "Bearer ya29.client-own"
        addon.requestheaders(flow)
        assert flow.request.headers["authorization"] == "Bearer ya29.client-own"
        assert flow.request.path == "/p?access_token=ya29.client-own&b=%2F"  # untouched, not re-encoded
        assert "gauth" not in flow.metadata


@pytest.mark.parametrize("token", ["short", CUSTOM + " with a space", CUSTOM + ",", CUSTOM + "=", CUSTOM + "\u00e9"])
def test_addon_rejects_placeholders_it_could_not_find(token: str) -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(addon, placeholder_tokens=[token])


def test_placeholder_runs_before_google_auth() -> None:
    kinds = [type(a) for a in default_addons()]
    assert kinds.index(PlaceholderAuth) < kinds.index(GoogleAuth)


def test_addon_loads_as_script() -> None:
    with taddons.context() as tctx:
        script = tctx.script(str(Path(__file__).resolve().parent.parent / "addons" / "placeholder.py"))
        assert [type(a).__name__ for a in script.addons] == ["PlaceholderAuth"]


# -- end to end: what the child sees, what Google sees -----------------------------------------------

CHILD_REPORT = """
import json, os, urllib.request
host = os.environ["GCE_METADATA_HOST"]
def get(path, flavor=True):
    req = urllib.request.Request(f"http://{host}/computeMetadata/v1/{path}",
                                 headers={"Metadata-Flavor": "Google"} if flavor else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Metadata-Flavor"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, None, ""
answers = {p: get(p) for p in ["instance/service-accounts/default/token",
                               "instance/service-accounts/default/?recursive=true",
                               "instance/service-accounts/default/email", "project/project-id"]}
answers["noflavor"] = get("instance/service-accounts/default/token", flavor=False)
print(json.dumps({"env": dict(os.environ), "answers": answers}))
"""


def test_child_sees_placeholder_never_the_real_token(fake: FakeGoogle, tmp_path: Path) -> None:
    script = CHILD_REPORT + """
from google.cloud import storage
storage.Client().bucket("demo-bucket").blob("hello.txt").download_as_text()
"""
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", script], "--audit-log", str(tmp_path / "audit.jsonl"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    answers = report["answers"]
    status, flavor, body = answers["instance/service-accounts/default/token"]
    assert status == 200 and flavor == "Google"
    seen = json.loads(body)["access_token"]
    assert seen.startswith(PLACEHOLDER_PREFIX)
    assert answers["noflavor"][0] == 403
    assert answers["project/project-id"][2] == "fake-project"
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in report["env"]

    issued = [t for t in fake.issued_tokens if t]
    assert issued, "the proxy never fetched a real token"
    everything_the_child_saw = out.stdout + out.stderr
    assert not [t[:12] for t in issued if t in everything_the_child_saw]

    api = [r for r in fake.requests if r.server == "googleapis"]
    assert api and all(r.token_valid for r in api)
    assert not any(seen in (r.authorization or "") for r in api)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert records and {r["auth"] for r in records} == {"injected"}


def test_no_placeholder_leaves_credential_discovery_alone(fake: FakeGoogle, tmp_path: Path) -> None:
    check = "import os; print(os.environ.get('GCE_METADATA_HOST'), 'GOOGLE_APPLICATION_CREDENTIALS' in os.environ)"
    out = run_wrapped(fake, tmp_path, [sys.executable, "-c", check], "--no-placeholder")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "127.0.0.1:9 True\n"  # as base_env set them


# -- end to end: no spelling of a placeholder leaves the proxy -------------------------------------


def hostile_headers() -> list[tuple[str, str]]:
    return [
        ("Authorization", f"Bearer\t{TOKEN}"),
        ("X-Goog-Iam-Authorization-Token", TOKEN),
        ("X-Serverless-Authorization", f"bEaReR   {TOKEN}"),
        ("Proxy-Authorization", "Basic " + b64(f"oauth2accesstoken:{TOKEN}")),
        ("X-Custom", f"a, Bearer {TOKEN}"),
        ("Cookie", f"session=1; tok={TOKEN}"),
        ("X-Registry-Auth", b64(json.dumps({"username": "oauth2accesstoken", "password": TOKEN}), urlsafe=True)),
    ]


KEPT_HEADERS = [("X-Keep", "kept"), ("Cookie", "theme=dark")]


def leaked(received: str) -> bool:
    """Any placeholder, in any of the spellings sent (base64 included), in what arrived."""
    return (TOKEN in received or PLACEHOLDER_PREFIX in received.lower()
            or any(value in received for _, value in hostile_headers()))


QUERY = f"access_token={TOKEN}&keep=1&key=%67cp-auth-proxy-placeholder.cached"


class _Origin(socketserver.ThreadingTCPServer):
    """A plain-HTTP origin that keeps the exact request heads it received."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _KeepHead)
        self.heads: list[bytes] = []


class _KeepHead(socketserver.StreamRequestHandler):
    server: _Origin

    def handle(self) -> None:
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.rfile.readline(65536)
            if not line:
                return
            head += line
        self.server.heads.append(head)
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")


@pytest.fixture
def origin() -> Iterator[_Origin]:
    server = _Origin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def exchange(proxy: ProxyProcess, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_no_spelling_of_a_placeholder_leaves_the_proxy(proxy_factory: ProxyFactory, fake: FakeGoogle,
                                                       origin: _Origin) -> None:
    port = origin.server_address[1]
    pp = proxy_factory("--resolve", f"www.plain.test=127.0.0.1:{port}")

    # A non-Google origin over plain HTTP: the proxy sees the request, so it strips.
    sent = [*hostile_headers(), *KEPT_HEADERS, ("Authorization", "Bearer ya29.client-own")]
    lines = "".join(f"{k}: {v}\r\n" for k, v in sent)
    answer = exchange(pp, (f"GET http://www.plain.test:{port}/echo?{QUERY} HTTP/1.1\r\n"
                           f"Host: www.plain.test:{port}\r\n{lines}Connection: close\r\n\r\n").encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    [head] = origin.heads
    reached_origin = leaked(head.decode("latin-1"))  # a bare bool: pytest must not print the head
    assert not reached_origin
    assert head.startswith(b"GET /echo?keep=1 HTTP/1.1\r\n")
    for kept in (b"X-Keep: kept", b"Cookie: theme=dark", b"Authorization: Bearer ya29.client-own"):
        assert kept in head

    # An injected Google host: none of it reaches Google, and the real token replaces the placeholder.
    pp.wait_for_line("token available")
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-x", pp.url, "--cacert", str(pp.ca_cert),
         *(a for k, v in [*hostile_headers(), *KEPT_HEADERS] for a in ("-H", f"{k}: {v}")),
         f"https://storage.googleapis.com/echo?{QUERY}"],
        env=base_env(), capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.stdout == "200", out.stderr
    [seen] = [r for r in fake.requests if r.path.startswith("/echo")]
    reached_google = leaked("\n".join([seen.path, *seen.headers.values()]))
    assert not reached_google
    assert seen.path == "/echo?keep=1" and seen.headers["x-keep"] == "kept" and seen.token_valid
