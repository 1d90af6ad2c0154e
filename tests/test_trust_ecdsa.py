"""The proxy CA: a new one is ECDSA P-256 in mitmproxy's files, an existing one (RSA) is kept; clients
get ECDSA leaves and can resume their TLS sessions with the real proxy."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from mitmproxy import certs

from proxy import trust
from proxy.errors import ProxyError
from tests.conftest import ProxyFactory
from tests.proxyproc import ProxyProcess

GOOGLE = "storage.googleapis.com"
OBJECT_PATH = "/storage/v1/b/demo-bucket/o/hello.txt?alt=media"
HELLO = b"hello from fake Google\n"
TIMEOUT = 15


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def snapshot(confdir: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, mode(p)) for p in confdir.iterdir()}


def seed_rsa_ca(confdir: Path) -> None:
    """A confdir as mitmproxy (and every earlier gcp-auth-proxy) left it: an RSA-2048 CA."""
    confdir.mkdir(mode=0o700)
    certs.CertStore.create_store(confdir, trust.CA_BASENAME, 2048)


# -- the files -------------------------------------------------------------------------------------

def test_new_ca_is_ecdsa_p256_in_mitmproxys_files_and_modes(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    ca_path = trust.ensure_ca(confdir)

    assert ca_path == confdir / "mitmproxy-ca-cert.pem"
    raw = (confdir / "mitmproxy-ca.pem").read_bytes()
    key = load_pem_private_key(raw, None)
    ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1)
    assert ca.public_key() == key.public_key()
    assert x509.load_pem_x509_certificates(raw) == [ca]  # key + the same certificate, one file
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)
    assert b"PRIVATE KEY" not in ca_path.read_bytes()
    assert (confdir / "mitmproxy-ca-cert.cer").read_bytes() == ca_path.read_bytes()
    p12_key, p12_cert, _ = pkcs12.load_key_and_certificates((confdir / "mitmproxy-ca.p12").read_bytes(), None)
    assert p12_key is not None and p12_key.public_key() == key.public_key() and p12_cert == ca
    no_key, cert, others = pkcs12.load_key_and_certificates((confdir / "mitmproxy-ca-cert.p12").read_bytes(), None)
    assert no_key is None and [c for c in (cert, *others) if c] == [ca]

    assert mode(confdir) == 0o700
    assert mode(confdir / "mitmproxy-ca.pem") == mode(confdir / "mitmproxy-ca.p12") == 0o600
    assert {mode(confdir / n) for n in ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.cer",
                                         "mitmproxy-ca-cert.p12")} == {0o644}
    assert not [p.name for p in confdir.iterdir() if p.name.startswith(".")]  # no temporary left


def test_mitmproxy_loads_the_new_ca_and_issues_ecdsa_leaves_from_it(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    trust.ensure_ca(confdir)
    # key_size only matters when mitmproxy has to create a CA; it must find ours instead
    store = certs.CertStore.from_store(confdir, trust.CA_BASENAME, 2048)
    leaf = store.get_cert(GOOGLE, [x509.DNSName(GOOGLE)]).cert.to_cryptography()
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate((confdir / "mitmproxy-ca-cert.pem").read_bytes()))


def test_second_start_keeps_the_ca(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    trust.ensure_ca(confdir)
    before = snapshot(confdir)
    trust.ensure_ca(confdir)
    assert snapshot(confdir) == before


def test_existing_rsa_ca_is_kept_byte_for_byte(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    seed_rsa_ca(confdir)
    before = snapshot(confdir)

    ca_path = trust.ensure_ca(confdir)

    assert snapshot(confdir) == before
    assert isinstance(x509.load_pem_x509_certificate(ca_path.read_bytes()).public_key(), rsa.RSAPublicKey)


def test_missing_certificate_beside_an_existing_key_is_rebuilt_from_that_key(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    seed_rsa_ca(confdir)
    key_file = (confdir / "mitmproxy-ca.pem").read_bytes()
    (confdir / "mitmproxy-ca-cert.pem").unlink()

    ca_path = trust.ensure_ca(confdir)

    assert (confdir / "mitmproxy-ca.pem").read_bytes() == key_file
    assert x509.load_pem_x509_certificate(ca_path.read_bytes()) == x509.load_pem_x509_certificates(key_file)[0]
    assert mode(ca_path) == 0o644


def test_ca_written_first_by_another_process_wins(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    trust.ensure_ca(confdir)
    key_file = confdir / "mitmproxy-ca.pem"
    theirs = key_file.read_bytes()

    # the window between ensure_ca's exists() check and its write
    assert trust.create_ca_file(key_file) is False

    assert key_file.read_bytes() == theirs
    assert not [p.name for p in confdir.iterdir() if p.name.startswith(".")]


def test_unreadable_ca_is_a_one_sentence_error(tmp_path: Path) -> None:
    confdir = tmp_path / "conf"
    confdir.mkdir()
    (confdir / "mitmproxy-ca.pem").write_text("not a key\n")
    with pytest.raises(ProxyError, match="cannot load the proxy CA"):
        trust.ensure_ca(confdir)
    assert (confdir / "mitmproxy-ca.pem").read_text() == "not a key\n"


# -- through the real proxy ------------------------------------------------------------------------

def client_context(pp: ProxyProcess, tls_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pp.ca_cert))
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.maximum_version = tls_version
    return ctx


def open_tunnel(pp: ProxyProcess) -> socket.socket:
    raw = socket.create_connection(("127.0.0.1", pp.port), timeout=TIMEOUT)
    raw.sendall(f"CONNECT {GOOGLE}:443 HTTP/1.1\r\nHost: {GOOGLE}:443\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = raw.recv(4096)
        assert chunk, head
        head += chunk
    assert b" 200 " in head.split(b"\r\n")[0], head
    return raw


class Fetched(NamedTuple):
    answer: bytes
    session: ssl.SSLSession | None
    reused: bool
    version: str | None


def fetch(pp: ProxyProcess, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> Fetched:
    """CONNECT, TLS (resuming ``session`` if given), one GET read to the end."""
    with ctx.wrap_socket(open_tunnel(pp), server_hostname=GOOGLE, session=session) as tls:
        version = tls.version()  # None once the peer has closed
        tls.sendall(f"GET {OBJECT_PATH} HTTP/1.1\r\nHost: {GOOGLE}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := tls.recv(65536):  # to the end: TLS 1.3 session tickets arrive after the handshake
            answer += chunk
        return Fetched(answer, tls.session, tls.session_reused, version)


def leaf_of(pp: ProxyProcess) -> x509.Certificate:
    with client_context(pp).wrap_socket(open_tunnel(pp), server_hostname=GOOGLE) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_client_receives_an_ecdsa_leaf_signed_by_the_proxy_ca(proxy: ProxyProcess) -> None:
    leaf = leaf_of(proxy)

    key = leaf.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(proxy.ca_cert.read_bytes()))
    answer = fetch(proxy, client_context(proxy)).answer
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(HELLO), answer[:200]


def test_proxy_with_an_existing_rsa_ca_keeps_serving_it(proxy_factory: ProxyFactory, tmp_path: Path) -> None:
    confdir = tmp_path / "confdir"  # the proxy_factory's confdir
    seed_rsa_ca(confdir)
    before = snapshot(confdir)
    pp = proxy_factory()
    pp.wait_for_line("token available")

    leaf = leaf_of(pp)

    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)
    leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(pp.ca_cert.read_bytes()))
    answer = fetch(pp, client_context(pp)).answer
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(HELLO), answer[:200]
    after = snapshot(confdir)
    assert {name: after[name] for name in before} == before


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_client_resumes_its_tls_session(proxy: ProxyProcess, tls_version: ssl.TLSVersion) -> None:
    ctx = client_context(proxy, tls_version)

    first = fetch(proxy, ctx)
    assert not first.reused
    assert first.session is not None and first.session.has_ticket
    second = fetch(proxy, ctx, first.session)

    assert second.reused
    assert second.version == first.version == ("TLSv1.2" if tls_version is ssl.TLSVersion.TLSv1_2 else "TLSv1.3")
    for answer in (first.answer, second.answer):
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(HELLO), answer[:200]
