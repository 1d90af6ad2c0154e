"""Placeholder credentials: the metadata endpoint's answers, the stripping addon, and end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mitmproxy import exceptions
from mitmproxy.test import taddons, tflow

from addons import default_addons
from addons.google_auth import GoogleAuth
from addons.placeholder import PLACEHOLDER_PREFIX, PlaceholderAuth, is_placeholder
from fakegoogle import FakeGoogle
from proxy import placeholder
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

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"Bearer  {TOKEN} ", True),
        (f"Bearer {PLACEHOLDER_PREFIX}from-an-earlier-run-cached-by-gsutil", True),
        (f"Basic {TOKEN}", False),
        ("Bearer ya29.real-looking", False),
        (f"Bearer x{TOKEN}", False),
        ("", False),
    ],
)
def test_is_placeholder(value: str, expected: bool) -> None:
    assert is_placeholder(value, [TOKEN.encode()]) is expected


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


def test_addon_keeps_a_real_client_token() -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, placeholder_tokens=[TOKEN])
        flow = tflow.tflow()
        flow.request.headers["authorization"] = "Bearer ya29.client-own"
        addon.requestheaders(flow)
        assert flow.request.headers["authorization"] == "Bearer ya29.client-own"
        assert "gauth" not in flow.metadata


def test_addon_rejects_short_placeholders() -> None:
    addon = PlaceholderAuth()
    with taddons.context(addon) as tctx, pytest.raises(exceptions.OptionsError):
        tctx.configure(addon, placeholder_tokens=["short"])


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
