"""``gcp-auth-proxy doctor``: what the proxy would do here, checked without starting it.

Each check is one entry: OK, WARN (this shell is not set up for something) or FAIL (the proxy
itself could not work: no credential, no token, an unusable CA or config directory), with the
fix in one sentence. The token is minted and thrown away; only how long that took is shown.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from proxy import trust
from proxy.doctor_entry import Entry, fail, ok, warn
from proxy.doctor_routes import check_route_credentials
from proxy.errors import ProxyError
from proxy.settings import Settings

FAILED = 1  # exit status when any check failed
PROBE_TIMEOUT = 3.0
CLOCK_SKEW_WARN = 30.0  # seconds; Google rejects signed JWTs a few minutes off
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
# The CA variables `run` and `env` set, and who reads each (README "Trusting the proxy CA").
TRUST_VARIABLES = {
    "REQUESTS_CA_BUNDLE": "requests and the google-cloud-* REST clients",
    "SSL_CERT_FILE": "httpx, aiohttp and Go programs",
    "CURL_CA_BUNDLE": "curl",
    "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE": "gcloud, gsutil and bq",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": "gRPC",
    "NODE_EXTRA_CA_CERTS": "Node.js",
}
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "grpc_proxy")
_SET_UP_SHELL = 'eval "$(gcp-auth-proxy env)", or run the client with `gcp-auth-proxy run -- CMD`'
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\s+(.+?)\s+-----END CERTIFICATE-----", re.DOTALL)


# -- credentials, token, clock ---------------------------------------------------------------------------

def _credential_source(environ: Mapping[str, str]) -> str:
    """Where ADC looks first, as load_credentials does (for the message only)."""
    from google.auth import _cloud_sdk

    path = environ.get("GOOGLE_APPLICATION_CREDENTIALS", "")
    if path:
        return f"GOOGLE_APPLICATION_CREDENTIALS ({path})"
    gcloud_file = _cloud_sdk.get_application_default_credentials_path()
    if os.path.isfile(gcloud_file):
        return f"gcloud's ADC file ({gcloud_file})"
    return "the GCE metadata server"


class _DateRecorder:
    """Keeps the Date header of every token-endpoint answer, with our clock around it."""

    def __init__(self) -> None:
        self.skew: float | None = None

    def __call__(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        received = time.time()
        date = response.headers.get("Date")
        if date:
            try:
                theirs = email.utils.parsedate_to_datetime(date).timestamp()
            except (TypeError, ValueError, IndexError):
                return response
            # Date has one-second resolution: compare it with the middle of the exchange.
            elapsed = response.elapsed.total_seconds() if response.elapsed else 0.0
            self.skew = theirs - (received - elapsed / 2)
        return response


def _upstream_bundle(settings: Settings, workdir: Path) -> str | None:
    """Public roots plus --upstream-ca in a temporary file, as the proxy would trust (nothing
    written to the confdir)."""
    if settings.upstream_ca is None:
        return None
    extra = trust.read_pem_certificates(settings.upstream_ca, "upstream CA file")
    bundle = workdir / "upstream-trust.pem"
    bundle.write_bytes(trust.public_roots().rstrip(b"\n") + b"\n" + extra)
    return str(bundle)


def check_credentials(settings: Settings, environ: Mapping[str, str], workdir: Path) -> list[Entry]:
    """ADC as the proxy loads it, one token minted through --resolve/--upstream-ca, the clock, then
    one token with each other credential the routes name."""
    from addons import token_transport
    from addons.credentials import credential_type, load_credentials, principal
    from addons.resolve import parse_resolve_rules
    from addons.token_cache import TokenCache, TokenError
    from addons.upstream_proxy import parse_routing

    try:
        bundle = _upstream_bundle(settings, workdir)
    except ProxyError as e:
        return [fail("upstream CA", str(e), "point --upstream-ca at a PEM file of CA certificates")]
    # Through GCP_AUTH_PROXY_UPSTREAM_PROXY when set, as the proxy's own token fetches go.
    routing = parse_routing(settings.upstream_proxy or "", settings.upstream_proxy_auth or "",
                            settings.upstream_proxy_bypass)
    request = token_transport.make_request(parse_resolve_rules(settings.resolve), bundle, routing=routing)
    dates = _DateRecorder()
    request.session.hooks["response"].append(dates)
    scopes = list(settings.scopes)
    cache = TokenCache(lambda: load_credentials(scopes, request), request, sleep=lambda _s: None)
    started = time.monotonic()
    error: TokenError | None = None
    token = None
    try:
        token = cache.refresh()
    except TokenError as e:
        error = e
    elapsed_ms = (time.monotonic() - started) * 1000
    creds = cache.credentials
    entries: list[Entry] = []
    if creds is None:
        if error is None or error.reason == "no_credentials":
            entries.append(fail("credentials", "none found (no GOOGLE_APPLICATION_CREDENTIALS, no gcloud "
                                "ADC file, no metadata server)",
                                "set GOOGLE_APPLICATION_CREDENTIALS to a key file, run `gcloud auth "
                                "application-default login`, or run on a VM with a service account"))
        else:
            entries.append(fail("credentials", f"not usable from {_credential_source(environ)}: {error}",
                                "fix or replace the file the message names"))
        entries.append(fail("token", "not minted: there is no credential to mint it with",
                            "fix the credentials first"))
    else:
        quota = getattr(creds, "quota_project_id", None) or "none"
        entries.append(ok("credentials", f"{credential_type(creds)} credentials for "
                          f"{principal(creds) or 'an unknown principal'} from {_credential_source(environ)}; "
                          f"quota project: {quota}"))
        if token is not None:
            lifetime = "" if token.expires_at is None else \
                f"; it expires in {max(0, round((token.expires_at - time.time()) / 60))} min"
            via = " through the upstream proxy" if settings.upstream_proxy else ""
            entries.append(ok("token", f"minted one{via} in {elapsed_ms:.0f} ms (fingerprint "
                              f"{token.fingerprint}){lifetime}"))
        else:
            entries.append(fail("token", f"could not mint one ({elapsed_ms:.0f} ms): {error}",
                                "fix what the message names; the proxy would answer every injected "
                                "request with 502 until then"))
    if dates.skew is None:
        _probe_date(request, getattr(creds, "_token_uri", None) or DEFAULT_TOKEN_URI)
    entries.append(_clock_entry(dates.skew))
    entries += check_route_credentials(settings, parse_resolve_rules(settings.resolve), bundle, routing)
    return entries


def _probe_date(request: Any, url: str) -> None:
    """One HEAD to the token endpoint, for its Date header (the hook records it)."""
    with contextlib.suppress(Exception):  # unreachable or refused: the clock is just not compared
        request.session.head(url, timeout=PROBE_TIMEOUT, allow_redirects=False)


def _clock_entry(skew: float | None) -> Entry:
    if skew is None:
        return warn("clock", "not compared: the token endpoint gave no Date header (unreachable?)",
                    "check that the token endpoint can be reached (--resolve, --upstream-ca)")
    if abs(skew) <= CLOCK_SKEW_WARN:
        return ok("clock", f"within {max(1, round(abs(skew)))} s of the token endpoint's")
    direction = "behind" if skew > 0 else "ahead of"
    return warn("clock", f"{abs(skew):.0f} s {direction} the token endpoint's clock",
                "synchronise the clock (e.g. `timedatectl set-ntp true`): Google rejects signed "
                "requests a few minutes off")


# -- confdir and CA ---------------------------------------------------------------------------------------

def check_confdir(confdir: Path) -> Entry:
    if confdir.is_dir():
        if os.access(confdir, os.W_OK | os.X_OK):
            return ok("confdir", f"{confdir} is writable")
        return fail("confdir", f"{confdir} is not writable by this user",
                    "give this user the directory, or choose another with --confdir")
    if confdir.exists():
        return fail("confdir", f"{confdir} is not a directory", "choose a directory with --confdir")
    parent = next((p for p in confdir.parents if p.exists()), None)
    if parent is not None and parent.is_dir() and os.access(parent, os.W_OK | os.X_OK):
        return ok("confdir", f"{confdir} will be created on first start")
    return fail("confdir", f"{confdir} cannot be created ({parent} is not writable)",
                "choose a writable directory with --confdir")


def check_ca(confdir: Path) -> tuple[Entry, bytes | None]:
    """The CA the proxy would use, loaded read-only; returns its certificate (DER) when usable."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path = confdir / trust.CA_CERT_NAME
    key_path = confdir / trust.CA_KEY_NAME
    if not key_path.exists():
        return warn("proxy CA", f"none yet in {confdir}",
                    "`gcp-auth-proxy ca` creates it (serve and run do too), then trust that certificate"), None
    try:
        raw = key_path.read_bytes()
        cert = x509.load_pem_x509_certificates(raw)[0]
        key = serialization.load_pem_private_key(raw, None)
        public = cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo) != public:
            raise ValueError("its certificate does not match its key")
        if cert_path.read_bytes().strip() != cert.public_bytes(serialization.Encoding.PEM).strip():
            raise ValueError(f"{cert_path.name} is not the certificate in {key_path.name}")
    except (OSError, ValueError, TypeError, IndexError) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        return fail("proxy CA", f"{key_path} cannot be used: {detail}",
                    f"move the mitmproxy-ca* files out of {confdir} and run `gcp-auth-proxy ca` for a "
                    "new CA (clients must then trust the new certificate)"), None
    expires = cert.not_valid_after_utc
    if expires.timestamp() < time.time():
        return fail("proxy CA", f"{cert_path} expired on {expires:%Y-%m-%d}",
                    f"move the mitmproxy-ca* files out of {confdir} and run `gcp-auth-proxy ca`"), None
    return ok("proxy CA", f"{cert_path} (valid until {expires:%Y-%m-%d})"), \
        cert.public_bytes(serialization.Encoding.DER)


def bundle_contains(path: Path, der: bytes) -> bool:
    """Does this PEM bundle hold this certificate? (Compared as DER; other blocks are skipped.)"""
    for match in _PEM.finditer(path.read_bytes()):
        try:
            if base64.b64decode(b"".join(match.group(1).split()), validate=True) == der:
                return True
        except (binascii.Error, ValueError):
            continue
    return False


def check_trust(environ: Mapping[str, str], ca_der: bytes | None) -> Iterator[Entry]:
    for name, clients in TRUST_VARIABLES.items():
        check = f"trust {name}"
        value = environ.get(name, "")
        if not value:
            yield warn(check, f"not set ({clients} will not trust the proxy CA)", _SET_UP_SHELL)
            continue
        path = Path(value)
        if ca_der is None:
            yield warn(check, f"{value}: not compared, there is no usable proxy CA yet",
                       "create the CA first (`gcp-auth-proxy ca`)")
            continue
        try:
            found = bundle_contains(path, ca_der)
        except OSError as e:
            yield warn(check, f"{value} cannot be read ({e.strerror})", _SET_UP_SHELL)
            continue
        if found:
            yield ok(check, f"{value} contains the proxy CA")
        else:
            yield warn(check, f"{value} lacks the proxy CA ({clients} will reject intercepted "
                       "hosts)", _SET_UP_SHELL)


# -- proxy variables and the proxy behind them ------------------------------------------------------------

def _no_proxy_bypasses_google(environ: Mapping[str, str]) -> str | None:
    """The NO_PROXY entry that sends *.googleapis.com around the proxy, if any."""
    for name in ("NO_PROXY", "no_proxy"):
        for entry in environ.get(name, "").split(","):
            entry = entry.strip().lower()
            bare = entry.lstrip("*").lstrip(".")
            if entry == "*" or (bare and ("storage.googleapis.com".endswith("." + bare)
                                          or bare == "storage.googleapis.com")):
                return f"{name}={entry}"
    return None


def check_proxy_variables(environ: Mapping[str, str], probe: Callable[[str], Entry]) -> Iterator[Entry]:
    values = {name: environ[name] for name in PROXY_VARIABLES if environ.get(name)}
    if not values.get("HTTPS_PROXY") and not values.get("https_proxy"):
        yield warn("proxy variables", "neither HTTPS_PROXY nor https_proxy is set: clients in this "
                   "shell go straight to Google, without the proxy's token", _SET_UP_SHELL)
    else:
        shown = ", ".join(f"{k}={_without_password(v)}" for k, v in values.items())
        distinct = {v for k, v in values.items() if k != "grpc_proxy"}
        if len(distinct) > 1:
            yield warn("proxy variables", f"{shown}: they disagree, so clients pick different proxies",
                       "set HTTPS_PROXY and https_proxy to the same URL")
        else:
            yield ok("proxy variables", shown)
    bypass = _no_proxy_bypasses_google(environ)
    if bypass:
        yield warn("NO_PROXY", f"{bypass} sends *.googleapis.com around the proxy",
                   "remove that entry (or use `gcp-auth-proxy run`, which keeps NO_PROXY to loopback)")
    for url in dict.fromkeys(values.values()):
        yield probe(url)


def _without_password(url: str) -> str:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def probe_proxy(url: str) -> Entry:
    """Is a proxy listening at ``url``, and is it gcp-auth-proxy? One origin-form request, which
    our proxy answers with a JSON 502 naming itself (nothing is forwarded, nothing is logged)."""
    check = f"proxy {_without_password(url)}"
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", ""):
        return warn(check, f"a {parts.scheme}:// proxy URL: gcp-auth-proxy is reached over http://",
                    "use http://HOST:PORT (the clients' TLS runs inside the CONNECT tunnel)")
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or 80
    except ValueError:
        return warn(check, "the URL has no valid port", "use http://HOST:PORT")
    head = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        head += f"Proxy-Authorization: Basic {base64.b64encode(creds).decode()}\r\n"
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT) as s:
            s.sendall((head + "\r\n").encode())
            answer = b""
            while len(answer) < 65536 and (chunk := s.recv(65536)):
                answer += chunk
    except OSError as e:
        return warn(check, f"nothing answers there ({e.strerror or e})",
                    "start `gcp-auth-proxy serve`, or unset the variable")
    status = answer.split(b" ", 2)[1].decode(errors="replace") if answer.startswith(b"HTTP/") else ""
    if b'"domain": "gcp-auth-proxy"' in answer:
        return ok(check, "gcp-auth-proxy is listening and answering")
    if status == "407":
        return warn(check, "a proxy answers but wants credentials this URL does not carry",
                    "put USER:PASS in the URL (http://USER:PASS@HOST:PORT)")
    if status == "403" and b"content-length: 0" in answer.lower():
        uid = os.geteuid() if hasattr(os, "geteuid") else "?"
        return warn(check, f"gcp-auth-proxy refuses this user (uid {uid}): it serves only its own "
                    "user on loopback", f"its owner can add --allow-uid {uid}, or run your own proxy")
    if status:
        return warn(check, f"something answers (HTTP {status}), but not gcp-auth-proxy",
                    "point the variable at gcp-auth-proxy, or check that the other proxy is meant")
    return warn(check, "something listens there but does not speak HTTP",
                "point the variable at gcp-auth-proxy's address")


# -- this machine --------------------------------------------------------------------------------------------

def check_user_namespaces(flags: int | None = None) -> Entry:
    """Can ``run --isolate`` make its namespaces? Tried by a fresh interpreter that exits at once
    (not a fork of this process: a library's fork handlers may start threads in the child, and a
    process with threads cannot enter a new user namespace)."""
    check = "user namespaces"
    if not sys.platform.startswith("linux") or not hasattr(os, "unshare"):
        return warn(check, f"not available on {sys.platform}", "run without --isolate")
    flags = os.CLONE_NEWUSER | os.CLONE_NEWNET if flags is None else flags
    code = (f"import os, sys\ntry:\n    os.unshare({flags})\nexcept OSError as e:\n"
            "    sys.exit(min(e.errno or 1, 255))")
    try:
        result = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=10,
                                check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return warn(check, f"could not be tried ({e})", "run without --isolate")
    if result.returncode == 0:
        return ok(check, "available (run --isolate can make its own user and network namespace)")
    reason = os.strerror(result.returncode) if result.returncode > 0 else f"signal {-result.returncode}"
    return warn(check, f"unavailable: {reason}",
                "allow unprivileged user namespaces (sysctl user.max_user_namespaces, "
                "kernel.unprivileged_userns_clone, or AppArmor's "
                "kernel.apparmor_restrict_unprivileged_userns), or run without --isolate")


def check_same_user() -> Entry:
    from addons import same_user

    method = same_user.detect()
    if method.lookup is None:
        return warn("who may connect", f"cannot tell which user opened a loopback connection here "
                    f"({method.reason}): every local user can use a loopback proxy",
                    "use --proxy-auth to limit who may use the proxy")
    return ok("who may connect", f"on loopback only uid {os.geteuid()} (this user) and --allow-uid "
              f"uids (owner looked up with {method.name})")


# -- all of it -----------------------------------------------------------------------------------------------

def run_checks(settings: Settings, environ: Mapping[str, str] | None = None,
               probe: Callable[[str], Entry] = probe_proxy) -> list[Entry]:
    environ = os.environ if environ is None else environ
    entries: list[Entry] = []
    with tempfile.TemporaryDirectory(prefix="gcp-auth-proxy-doctor-") as tmp:
        entries += check_credentials(settings, environ, Path(tmp))
    entries.append(check_confdir(settings.confdir))
    ca_entry, ca_der = check_ca(settings.confdir)
    entries.append(ca_entry)
    entries += check_trust(environ, ca_der)
    entries += check_proxy_variables(environ, probe)
    entries.append(check_same_user())
    entries.append(check_user_namespaces())
    return entries


def render(entries: Sequence[Entry]) -> str:
    width = max(len(e.check) for e in entries)
    lines = []
    for e in entries:
        line = f"{e.status:<4}  {e.check:<{width}}  {e.message}"
        if e.fix:
            line = f"{line.rstrip('.')}. Fix: {e.fix.rstrip('.')}."
        lines.append(line)
    failures = sum(e.status == "FAIL" for e in entries)
    warnings_ = sum(e.status == "WARN" for e in entries)
    lines.append(f"{failures} failed, {warnings_} to look at, {len(entries) - failures - warnings_} fine")
    return "\n".join(lines) + "\n"


def main(settings: Settings, *, as_json: bool = False) -> int:
    entries = run_checks(settings)
    if as_json:
        print(json.dumps([asdict(e) for e in entries], indent=2))
    else:
        print(render(entries), end="")
    return FAILED if any(e.status == "FAIL" for e in entries) else 0
