"""The proxy's CA and the certificate bundles built from it; never copies the CA key anywhere."""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from proxy.errors import ExitStatus, ProxyError

CA_BASENAME = "mitmproxy"  # mitmproxy's file names (CertStore.from_store), so it loads our CA as its own
CA_CERT_NAME = f"{CA_BASENAME}-ca-cert.pem"
CA_KEY_NAME = f"{CA_BASENAME}-ca.pem"  # key + cert, mitmproxy's format
CA_DHPARAM_NAME = f"{CA_BASENAME}-dhparam.pem"
# The rest of what mitmproxy's CertStore.create_store writes (for devices that want them):
# PEM as .cer for Android, PKCS#12 of the certificate alone and of key + certificate for Windows.
CA_CERT_CER_NAME = f"{CA_BASENAME}-ca-cert.cer"
CA_CERT_P12_NAME = f"{CA_BASENAME}-ca-cert.p12"
CA_KEY_P12_NAME = f"{CA_BASENAME}-ca.p12"
UPSTREAM_BUNDLE_NAME = "upstream-trust.pem"
CLIENT_BUNDLE_NAME = "client-trust.pem"
# mitmproxy signs every leaf with the CA key *and* gives the leaf that same key
# (certs.CertStore.get_cert), so the CA's key type is the key type of every intercepted handshake.
# mitmproxy itself only creates RSA CAs; P-256 makes each new client connection cheaper.
CA_CURVE = ec.SECP256R1()
CA_NAME = x509.Name([
    x509.NameAttribute(NameOID.COMMON_NAME, "gcp-auth-proxy CA"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gcp-auth-proxy"),
])
# mitmproxy's CA_EXPIRY and CERT_VALIDITY_OFFSET (clock skew between proxy and clients)
CA_LIFETIME = datetime.timedelta(days=10 * 365)
CA_BACKDATE = datetime.timedelta(days=2)


def ensure_confdir(confdir: Path) -> None:
    try:
        confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(confdir, 0o700)
    except OSError as e:
        raise ProxyError(f"cannot create config directory {confdir}: {e.strerror}", ExitStatus.CANTCREAT) from e


def ensure_ca(confdir: Path) -> Path:
    """Create the proxy CA in ``confdir`` if missing; returns the path of its certificate (PEM).

    A confdir that already holds a CA (ours or one mitmproxy made, RSA or EC) keeps it: users have
    trusted that certificate. Only export files missing beside an existing CA are written again.
    """
    from mitmproxy import certs  # heavy import, only when needed

    ensure_confdir(confdir)
    key_file = confdir / CA_KEY_NAME
    try:
        if not key_file.exists():
            create_ca_file(key_file)
        write_ca_exports(confdir)
        # What mitmproxy will do at start-up: proves it loads the pair (and writes its dhparam file).
        certs.CertStore.from_files(key_file, confdir / CA_DHPARAM_NAME)
        for path in confdir.glob(f"{CA_BASENAME}-ca*"):
            if path.name != CA_CERT_NAME and not path.name.endswith((".cer", "-cert.p12")):
                os.chmod(path, 0o600)
    except OSError as e:
        raise ProxyError(f"cannot create the proxy CA in {confdir}: {e.strerror}", ExitStatus.CANTCREAT) from e
    except (ValueError, TypeError) as e:  # unreadable PEM, or a key with a passphrase
        raise ProxyError(f"cannot load the proxy CA {key_file}: {e}", ExitStatus.CANTCREAT) from e
    return confdir / CA_CERT_NAME


def new_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh ECDSA P-256 CA with the extensions mitmproxy's own CA has (certs.create_ca)."""
    key = ec.generate_private_key(CA_CURVE)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(CA_NAME)
        .issuer_name(CA_NAME)
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now - CA_BACKDATE + CA_LIFETIME)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def create_ca_file(key_file: Path) -> bool:
    """Write a new CA (key + certificate, mode 0600) to ``key_file`` unless it exists.

    Returns False when another process created it first: two proxies starting on a fresh confdir
    both end up with the one CA that won, never one each.
    """
    key, cert = new_ca()
    data = key.private_bytes(Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()) + cert.public_bytes(Encoding.PEM)
    fd, tmp_name = tempfile.mkstemp(dir=key_file.parent, prefix=f".{key_file.name}.")  # mode 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, key_file)  # atomic, and unlike os.replace it refuses to overwrite
        except FileExistsError:
            return False
    finally:
        tmp.unlink()
    return True


def write_ca_exports(confdir: Path) -> None:
    """Write the CA's export files mitmproxy would have written, where missing, from the key file."""
    needed = [name for name in (CA_CERT_NAME, CA_CERT_CER_NAME, CA_CERT_P12_NAME, CA_KEY_P12_NAME)
              if not (confdir / name).exists()]
    if not needed:
        return
    raw = (confdir / CA_KEY_NAME).read_bytes()
    cert = x509.load_pem_x509_certificates(raw)[0]
    pem = cert.public_bytes(Encoding.PEM)
    name = CA_BASENAME.encode()
    for file_name in needed:
        if file_name == CA_KEY_P12_NAME:
            key = serialization.load_pem_private_key(raw, None)
            if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
                raise ValueError(f"unsupported CA key type {type(key).__name__}")
            _write_atomic(confdir / file_name, pkcs12.serialize_key_and_certificates(
                name, key, cert, None, serialization.NoEncryption()), 0o600)
        elif file_name == CA_CERT_P12_NAME:
            _write_atomic(confdir / file_name, pkcs12.serialize_key_and_certificates(
                name, None, cert, None, serialization.NoEncryption()), 0o644)
        else:
            _write_atomic(confdir / file_name, pem, 0o644)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600 until chmod
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


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
