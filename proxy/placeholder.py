"""A loopback stand-in for the GCE metadata server that gives a ``run`` child placeholder tokens.

Tools that insist on credentials (google-cloud-* with default credentials, gcloud, gsutil) find
"a GCE instance" here and get a random token bound to this run. The proxy swaps it for the real
token on injected hosts and strips it elsewhere (``addons/placeholder.py``); the real token never
enters the child. Runs as a tiny asyncio server inside the proxy's own event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from addons import options
from addons.placeholder import PLACEHOLDER_PREFIX
from addons.same_user import Gate, admit_stream, is_loopback_host

logger = logging.getLogger(__name__)

PLACEHOLDER_EMAIL = "placeholder@gcp-auth-proxy.invalid"
PLACEHOLDER_LIFETIME = 3599  # clients re-ask about hourly and get the same placeholder again
ROOT = "/computeMetadata/v1/"
SA_PREFIX = "instance/service-accounts/"
DEFAULT_SCOPES = options.DEFAULT_SCOPES
_FLAVOR = ("Metadata-Flavor", "Google")
_MAX_HEAD = 16 * 1024
_PROJECT_VARIABLES = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT")


def new_placeholder() -> str:
    """A random token for one run; worthless anywhere but the proxy that knows it."""
    return PLACEHOLDER_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Identity:
    """What the endpoint tells the child about "its" service account."""

    token: str
    project_id: str | None = None
    # gcloud decides "on GCE" by numeric-project-id being digits; the real number is unknown here.
    numeric_project_id: str = "0"
    email: str = PLACEHOLDER_EMAIL
    scopes: tuple[str, ...] = DEFAULT_SCOPES


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "application/text"


def default_project(environ: Mapping[str, str]) -> str | None:
    """The project a child should see: the usual variables, else the credentials file's project."""
    for name in _PROJECT_VARIABLES:
        if environ.get(name):
            return environ[name]
    path = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return None
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    project = info.get("project_id") or info.get("quota_project_id")
    return project if isinstance(project, str) and project else None


def answer(method: str, target: str, headers: Mapping[str, str], identity: Identity) -> Answer:
    """The metadata server's reply to one request (pure; ``headers`` keys lower-case)."""
    if method not in ("GET", "HEAD"):
        return Answer(405, "Method Not Allowed\n")
    url = urlsplit(target)
    path = url.path
    if path == "/":
        return Answer(200, "computeMetadata/\n")
    if not path.startswith(ROOT):
        return Answer(404, "Not Found\n")
    if headers.get("metadata-flavor", "").lower() != "google":
        return Answer(403, "Missing required header: Metadata-Flavor\n", "text/plain")
    if "x-forwarded-for" in headers:  # as the real server: no requests relayed through a proxy
        return Answer(403, "Forbidden\n", "text/plain")
    key = path[len(ROOT):]
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    static = {
        "project/numeric-project-id": identity.numeric_project_id,
        "universe/universe-domain": "googleapis.com",
        SA_PREFIX: f"default/\n{identity.email}/\n",
    }
    if identity.project_id:
        static["project/project-id"] = identity.project_id
    static[SA_PREFIX.rstrip("/")] = static[SA_PREFIX]  # gsutil's apitools asks without the slash
    if key in static:
        return Answer(200, static[key])
    if not key.startswith(SA_PREFIX):
        return Answer(404, "Not Found\n")
    account, _, leaf = key[len(SA_PREFIX):].partition("/")
    if account not in ("default", identity.email):
        return Answer(404, "Not Found\n")
    if leaf == "":
        if query.get("recursive", "").lower() == "true":
            body: dict[str, object] = {"aliases": ["default"], "email": identity.email,
                                       "scopes": list(identity.scopes)}
            return Answer(200, json.dumps(body), "application/json")
        return Answer(200, "aliases\nemail\nscopes\ntoken\n")
    if leaf == "email":
        return Answer(200, identity.email)
    if leaf == "aliases":
        return Answer(200, "default\n")
    if leaf == "scopes":
        return Answer(200, "\n".join(identity.scopes) + "\n")
    if leaf == "token":
        token = {"access_token": identity.token, "expires_in": PLACEHOLDER_LIFETIME, "token_type": "Bearer"}
        return Answer(200, json.dumps(token), "application/json")
    return Answer(404, "Not Found\n")


_REASONS = {200: "OK", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 400: "Bad Request"}


def _encode(answer_: Answer, head_only: bool) -> bytes:
    body = answer_.body.encode()
    head = [
        f"HTTP/1.1 {answer_.status} {_REASONS.get(answer_.status, 'Error')}",
        f"{_FLAVOR[0]}: {_FLAVOR[1]}",
        f"Content-Type: {answer_.content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        "", "",
    ]
    return "\r\n".join(head).encode() + (b"" if head_only else body)


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, identity: Identity,
                  gate: Gate | None) -> None:
    if gate is not None and not await admit_stream(gate, reader, writer, "placeholder metadata endpoint"):
        return
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        lines = raw[:-4].decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        reply = answer(method, target, headers, identity)
        writer.write(_encode(reply, head_only=method == "HEAD"))
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    except ValueError:
        writer.write(_encode(Answer(400, "Bad Request\n"), head_only=False))
    finally:
        writer.close()


async def serve_metadata(identity: Identity, host: str = "127.0.0.1", gate: Gate | None = None) -> asyncio.Server:
    """Start the endpoint on ``host``, an ephemeral port; the caller closes the returned server.

    On loopback only the uids ``gate`` admits may connect (addons/same_user.py); without a gate,
    only this process's own uid.
    """
    if is_loopback_host(host):
        gate = gate or Gate()
        gate.prepare()
    else:
        gate = None  # the uid rule is for loopback listeners only
    return await asyncio.start_server(
        lambda r, w: _handle(r, w, identity, gate), host, 0, limit=_MAX_HEAD,
    )


def server_address(server: asyncio.Server) -> str:
    """``HOST:PORT`` as GCE_METADATA_HOST expects it."""
    host, port = server.sockets[0].getsockname()[:2]
    return f"{host}:{port}"

