"""The proxy's CA and the certificate bundles built from it; never copies the CA key anywhere."""

from __future__ import annotations

import os
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from proxy.errors import ExitStatus, ProxyError

CA_BASENAME = "mitmproxy"
CA_CERT_NAME = f"{CA_BASENAME}-ca-cert.pem"
CA_KEY_NAME = f"{CA_BASENAME}-ca.pem"  # key + cert, mitmproxy's format
UPSTREAM_BUNDLE_NAME = "upstream-trust.pem"
CLIENT_BUNDLE_NAME = "client-trust.pem"
CA_KEY_SIZE = 2048


def ensure_confdir(confdir: Path) -> None:
    try:
        confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(confdir, 0o700)
    except OSError as e:
        raise ProxyError(f"cannot create config directory {confdir}: {e.strerror}", ExitStatus.CANTCREAT) from e


def ensure_ca(confdir: Path) -> Path:
    """Create the proxy CA in ``confdir`` if missing; returns the path of its certificate (PEM)."""
    from mitmproxy import certs  # heavy import, only when needed

    ensure_confdir(confdir)
    try:
        certs.CertStore.from_store(confdir, CA_BASENAME, CA_KEY_SIZE)
        for path in confdir.glob(f"{CA_BASENAME}-ca*"):
            if path.name != CA_CERT_NAME and not path.name.endswith((".cer", "-cert.p12")):
                os.chmod(path, 0o600)
    except OSError as e:
        raise ProxyError(f"cannot create the proxy CA in {confdir}: {e.strerror}", ExitStatus.CANTCREAT) from e
    return confdir / CA_CERT_NAME


def read_pem_certificates(path: Path, what: str) -> bytes:
    """The certificates in a PEM file, validated; raises ProxyError naming ``what``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProxyError(f"cannot read {what} {path}: {e.strerror}") from e
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ProxyError(f"{what} {path} contains no PEM certificate")
    return b"".join(c.public_bytes(Encoding.PEM) for c in certificates)


def public_roots() -> bytes:
    return Path(certifi.where()).read_bytes()


def write_if_changed(path: Path, data: bytes) -> Path:
    """Atomically (re)write ``path`` only when its content differs; readable by others (certs only)."""
    try:
        if path.exists() and path.read_bytes() == data:
            return path
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise ProxyError(f"cannot write {path}: {e.strerror}", ExitStatus.CANTCREAT) from e
    return path


def upstream_bundle(confdir: Path, extra_ca: Path | None) -> Path | None:
    """Public roots plus ``extra_ca`` for verifying upstreams (mitmproxy's option replaces roots)."""
    if extra_ca is None:
        return None
    extra = read_pem_certificates(extra_ca, "upstream CA file")
    ensure_confdir(confdir)
    return write_if_changed(confdir / UPSTREAM_BUNDLE_NAME, public_roots().rstrip(b"\n") + b"\n" + extra)


def client_bundle(confdir: Path, ca_cert: Path) -> Path:
    """Public roots plus the proxy CA certificate, for clients whose CA variable replaces the roots."""
    proxy_ca = read_pem_certificates(ca_cert, "proxy CA certificate")
    return write_if_changed(confdir / CLIENT_BUNDLE_NAME, public_roots().rstrip(b"\n") + b"\n" + proxy_ca)
