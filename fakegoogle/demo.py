"""``python -m fakegoogle.demo`` (what ``gcp-auth-proxy demo`` runs): real clients through the real
proxy, offline, against this local fake Google.

Shows each request, its status and that a real token was injected (as a fingerprint only), and
under ``run`` the placeholder the child held instead. Never prints a token. The proxy runs as its
own process (``python -m proxy``), as a user would run it; the proxy never imports this package.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from addons.redact import fingerprint
from proxy import trust

from .fake import FakeGoogle

STEP_TIMEOUT = 60
EXIT_UNAVAILABLE = 69  # sysexits EX_UNAVAILABLE, as the CLI reports a demo it cannot run
OBJECT_URL = "https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media"
# Machine-wide CA and proxy settings would hide what the proxy does; every client starts clean.
_CLEARED = (
    "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
    "no_proxy", "grpc_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", "HTTPLIB2_CA_CERTS",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", "GOOGLE_APPLICATION_CREDENTIALS", "GCE_METADATA_HOST",
    "GCE_METADATA_IP", "GCE_METADATA_ROOT", "CLOUDSDK_CONFIG", "BOTO_CONFIG", "BOTO_PATH",
    "GCP_AUTH_PROXY_RUN",
)

PLACEHOLDER_CHILD = """
import hashlib, json, os, urllib.request
from google.cloud import storage
req = urllib.request.Request(
    "http://" + os.environ["GCE_METADATA_HOST"] + "/computeMetadata/v1/instance/service-accounts/default/token",
    headers={"Metadata-Flavor": "Google"})
seen = json.load(urllib.request.urlopen(req, timeout=10))["access_token"]
client = storage.Client()  # default credentials, found on the placeholder metadata endpoint
text = client.bucket("demo-bucket").blob("hello.txt").download_as_text()
print(json.dumps({"placeholder_prefix": seen[:27],
                  "placeholder_id": "sha256:" + hashlib.sha256(seen.encode()).hexdigest()[:12],
                  "project": client.project, "text": text}))
"""

ANONYMOUS_CLIENT = """
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
client = storage.Client(project="fake-project", credentials=AnonymousCredentials())
print(client.bucket("demo-bucket").blob("hello.txt").download_as_text(), end="")
"""


class DemoFailure(Exception):
    """A step failed; the message is one sentence for the user."""


@dataclass
class Demo:
    workdir: Path
    fake: FakeGoogle
    sa_key: Path
    confdir: Path
    outputs: list[str]
    say: Callable[[str], None]

    def proxy_options(self) -> list[str]:
        g_host, g_port = self.fake.googleapis_addr
        o_host, o_port = self.fake.other_addr
        return ["--confdir", str(self.confdir),
                "--resolve", f"*.googleapis.com={g_host}:{g_port}",
                "--resolve", f"*.example.test={o_host}:{o_port}",
                "--upstream-ca", str(self.fake.google_ca_pem)]

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        env.update(NO_GCE_CHECK="true", PYTHONUNBUFFERED="1", **extra)
        return env

    def run(self, argv: Sequence[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            out = subprocess.run(  # noqa: PLW1510 - callers check the status
                list(argv), env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                cwd=self.workdir)
        except subprocess.TimeoutExpired:
            raise DemoFailure(f"{what} did not finish within {STEP_TIMEOUT} seconds.") from None
        self.outputs.extend([out.stdout, out.stderr])
        if out.returncode != 0:
            last = (out.stderr.strip().splitlines() or ["no error output"])[-1]
            raise DemoFailure(f"{what} failed with exit status {out.returncode}: {last}")
        return out

    def show_audit(self, path: Path, since: int = 0) -> int:
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines[since:]:
            r = json.loads(line)
            auth = r.get("auth")
            detail = f"real token injected ({r['token_id']})" if auth == "injected" else f"auth={auth}"
            self.say(f"      proxy: {r['method']} {r['host']}{r['path'].split('?')[0]} -> {r['status']}, {detail}")
        return len(lines)


def _proxy_command() -> list[str]:
    return [sys.executable, "-m", "proxy"]


def _start_serve(demo: Demo, audit: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*_proxy_command(), "serve", "--listen", "127.0.0.1:0", "--audit-log", str(audit), *demo.proxy_options()],
        env=demo.env(GOOGLE_APPLICATION_CREDENTIALS=str(demo.sa_key)), cwd=demo.workdir,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + STEP_TIMEOUT
    for line in proc.stderr:  # the proxy announces its address once it accepts connections
        demo.outputs.append(line)
        if "listening on " in line:
            address = line.split("listening on ", 1)[1].split(";", 1)[0].strip()
            return proc, f"http://{address}"
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise DemoFailure("the proxy did not start: " + "".join(demo.outputs[-3:]).strip())


def _serve_steps(demo: Demo) -> None:
    audit = demo.workdir / "serve-audit.jsonl"
    demo.say("1. gcp-auth-proxy serve (a service-account key from the fake; clients hold no credentials)")
    proc, url = _start_serve(demo, audit)
    ca = demo.confdir / "mitmproxy-ca-cert.pem"
    try:
        demo.say(f"   listening on {url}; clients trust its CA {ca}")
        demo.say("   a) curl -x PROXY --cacert CA " + OBJECT_URL)
        out = demo.run(["curl", "-sS", "--fail-with-body", "-x", url, "--cacert", str(ca), OBJECT_URL],
                       demo.env(), "curl through serve")
        demo.say(f"      client got: {out.stdout.strip()!r}")
        seen = demo.show_audit(audit)
        demo.say("   b) google-cloud-storage with AnonymousCredentials (HTTPS_PROXY, REQUESTS_CA_BUNDLE)")
        out = demo.run([sys.executable, "-c", ANONYMOUS_CLIENT],
                       demo.env(HTTPS_PROXY=url, REQUESTS_CA_BUNDLE=str(trust.client_bundle(demo.confdir, ca))),
                       "google-cloud-storage through serve")
        demo.say(f"      client got: {out.stdout.strip()!r}")
        demo.show_audit(audit, seen)
    finally:
        proc.terminate()
        try:
            _rest, err = proc.communicate(timeout=15)
            demo.outputs.append(err)
        except subprocess.TimeoutExpired:
            proc.kill()


def _run_steps(demo: Demo) -> None:
    audit = demo.workdir / "run-audit.jsonl"
    run = [*_proxy_command(), "run", "--audit-log", str(audit), *demo.proxy_options(), "--"]
    env = demo.env(GOOGLE_APPLICATION_CREDENTIALS=str(demo.sa_key))
    demo.say("2. gcp-auth-proxy run -- TOOL: a private proxy for one command; the tool gets placeholders")
    demo.say("   a) a Python script using default credentials: storage.Client()")
    out = demo.run([*run, sys.executable, "-c", PLACEHOLDER_CHILD], env, "the default-credentials script under run")
    report = json.loads(out.stdout)
    demo.say(f"      child's project {report['project']!r}; it got {report['text'].strip()!r}")
    demo.say(f"      the child held a placeholder ({report['placeholder_prefix']}*, {report['placeholder_id']}),"
             " never the real token")
    seen = demo.show_audit(audit)
    demo.say("   b) curl " + OBJECT_URL)
    out = demo.run([*run, "curl", "-sS", "--fail-with-body", OBJECT_URL], env, "curl under run")
    demo.say(f"      client got: {out.stdout.strip()!r}")
    seen = demo.show_audit(audit, seen)
    if shutil.which("gcloud") is None:
        demo.say("   c) gcloud storage ls: skipped, the Google Cloud CLI is not installed")
        return
    demo.say("   c) gcloud storage ls (a fresh CLOUDSDK_CONFIG, no `gcloud auth login`)")
    config = demo.workdir / "gcloud"
    config.mkdir(exist_ok=True)
    genv = {**env, "CLOUDSDK_CONFIG": str(config), "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "true"}
    out = demo.run([*run, "gcloud", "storage", "ls"], genv, "gcloud storage ls under run")
    demo.say(f"      gcloud listed: {', '.join(out.stdout.split())}")
    demo.show_audit(audit, seen)


def _check_no_token_shown(demo: Demo, tokens: list[str]) -> None:
    shown = "".join(demo.outputs)
    if any(t and t in shown for t in tokens):
        raise DemoFailure("a real token appeared in a client's or the proxy's output.")


def run_demo(keep: bool = False) -> int:
    """Run the demo; 0 on success, 1 with one sentence on stderr when a step failed."""
    try:
        from google.cloud import storage  # noqa: F401 - the demo's own client
    except ImportError as e:
        print(f"gcp-auth-proxy demo: the demo needs the fake Google and its clients ({e.name} is missing): "
              "pip install 'gcp-auth-proxy[test]', or run `make demo` from a checkout", file=sys.stderr)
        return EXIT_UNAVAILABLE

    def say(text: str) -> None:
        print(text, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="gcp-auth-proxy-demo-"))
    fake = FakeGoogle(workdir / "fake")
    started = time.monotonic()
    try:
        fake.start()
        demo = Demo(workdir, fake, fake.write_service_account_key(workdir / "sa.json"), workdir / "confdir", [], say)
        say(f"Fake Google on 127.0.0.1:{fake.googleapis_addr[1]} (TLS, its own CA); nothing leaves this machine.")
        _serve_steps(demo)
        _run_steps(demo)
        tokens = [t for t in fake.issued_tokens if t]
        api = [r for r in fake.requests if r.server == "googleapis"]
        if not api or not all(r.token_valid for r in api):
            raise DemoFailure("the fake Google received a request without a valid token.")
        if any("placeholder" in (r.authorization or "") for r in api):
            raise DemoFailure("a placeholder token reached the fake Google.")
        _check_no_token_shown(demo, tokens)
        ids = sorted({fingerprint(t) for t in tokens})
        say(f"3. Google saw {len(api)} API requests, all with a valid real token ({', '.join(ids)});")
        say("   no placeholder reached it, and no token was printed by any client or the proxy.")
        say(f"Demo finished in {time.monotonic() - started:.1f} s.")
        return 0
    except DemoFailure as e:
        print(f"gcp-auth-proxy demo: {e}", file=sys.stderr)
        return 1
    finally:
        fake.stop()
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fakegoogle.demo",
        description="gcp-auth-proxy's demo: real clients through the real proxy against a local fake Google.")
    parser.add_argument("--keep", action="store_true", help="keep the demo's temporary directory")
    args = parser.parse_args(argv)
    try:
        return run_demo(keep=args.keep)
    except KeyboardInterrupt:  # the clean-up above has run; no traceback for a Ctrl-C
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
