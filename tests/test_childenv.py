"""The child's environment under `run`: a pure function, tested as a table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from proxy import wrap

URL = "http://127.0.0.1:41000"
CA = wrap.ChildTrust(bundle="/conf/client-trust.pem", node_extra="/conf/mitmproxy-ca-cert.pem")
BOTO = "/run/boto.cfg"
MD = "127.0.0.1:42000"


def env_of(base: dict[str, str], **kw: object) -> dict[str, str]:
    return wrap.child_env(base, URL, CA, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("base", "name", "expected"),
    [
        ({}, "HTTPS_PROXY", URL),
        ({}, "https_proxy", URL),
        ({}, "HTTP_PROXY", URL),
        ({}, "http_proxy", URL),
        ({}, "grpc_proxy", URL),
        ({"HTTPS_PROXY": "http://corp:3128"}, "HTTPS_PROXY", URL),
        ({}, "NO_PROXY", "localhost,127.0.0.1,::1"),
        ({}, "no_proxy", "localhost,127.0.0.1,::1"),
        ({"NO_PROXY": "internal.corp,.svc"}, "NO_PROXY", "internal.corp,.svc,localhost,127.0.0.1,::1"),
        ({"no_proxy": "internal.corp"}, "NO_PROXY", "internal.corp,localhost,127.0.0.1,::1"),
        ({"NO_PROXY": " 127.0.0.1 , a.b ,"}, "no_proxy", "127.0.0.1,a.b,localhost,::1"),
        ({}, "REQUESTS_CA_BUNDLE", CA.bundle),
        ({"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}, "SSL_CERT_FILE", CA.bundle),
        ({}, "CURL_CA_BUNDLE", CA.bundle),
        ({}, "CLOUDSDK_CORE_CUSTOM_CA_CERTS_FILE", CA.bundle),
        ({}, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", CA.bundle),
        ({}, "HTTPLIB2_CA_CERTS", CA.bundle),
        ({"NODE_EXTRA_CA_CERTS": "/mine.pem"}, "NODE_EXTRA_CA_CERTS", CA.node_extra),
        ({}, "NODE_USE_ENV_PROXY", "1"),
        ({"SSL_CERT_DIR": "/etc/ssl/certs"}, "SSL_CERT_DIR", "/etc/ssl/certs"),  # adds, not replaces
        ({}, "CLOUDSDK_PROXY_TYPE", "http"),
        ({}, "CLOUDSDK_PROXY_ADDRESS", "127.0.0.1"),
        ({}, "CLOUDSDK_PROXY_PORT", "41000"),
        ({}, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false"),
        ({"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "true"}, "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "true"),
        ({}, wrap.MARKER, URL),
        ({"PATH": "/bin", "HOME": "/home/u"}, "PATH", "/bin"),
        ({"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}, "GOOGLE_APPLICATION_CREDENTIALS", "/k.json"),
    ],
)
def test_child_env_sets(base: dict[str, str], name: str, expected: str) -> None:
    assert env_of(base)[name] == expected


@pytest.mark.parametrize(
    ("base", "name", "expected"),
    [
        ({}, "GCE_METADATA_HOST", MD),
        ({}, "GCE_METADATA_IP", MD),
        ({}, "GCE_METADATA_ROOT", MD),  # gcloud's own variable
        ({"GCE_METADATA_HOST": "169.254.169.254"}, "GCE_METADATA_HOST", MD),
        ({"GOOGLE_APPLICATION_CREDENTIALS": "/k.json"}, "GOOGLE_APPLICATION_CREDENTIALS", None),
        ({"NO_GCE_CHECK": "true"}, "NO_GCE_CHECK", None),
    ],
)
def test_child_env_with_placeholder_metadata(base: dict[str, str], name: str, expected: str | None) -> None:
    assert env_of(base, metadata_host=MD).get(name) == expected


def test_without_placeholder_metadata_is_left_alone() -> None:
    env = env_of({"GCE_METADATA_HOST": "169.254.169.254"})
    assert env["GCE_METADATA_HOST"] == "169.254.169.254"
    assert "GCE_METADATA_ROOT" not in env


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ({"HOME": "/home/u"}, ["/etc/boto.cfg", "/home/u/.boto", BOTO]),
        ({}, ["/etc/boto.cfg", BOTO]),
        ({"BOTO_CONFIG": "/mine.boto", "BOTO_PATH": "/ignored"}, ["/mine.boto", BOTO]),
        ({"BOTO_PATH": f"/a.boto{os.pathsep}/b.boto"}, ["/a.boto", "/b.boto", BOTO]),
    ],
)
def test_boto_path_layers_ours_last(base: dict[str, str], expected: list[str]) -> None:
    env = env_of(base, boto_file=BOTO)
    assert env["BOTO_PATH"].split(os.pathsep) == expected
    assert "BOTO_CONFIG" not in env  # boto would ignore BOTO_PATH


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, {"session_kwargs": {"trust_env": True}}),
        ('{"project": "p"}', {"project": "p", "session_kwargs": {"trust_env": True}}),
        ('{"session_kwargs": {"timeout": 5}}', {"session_kwargs": {"timeout": 5, "trust_env": True}}),
        ("not json", {"session_kwargs": {"trust_env": True}}),
        ("[1]", {"session_kwargs": {"trust_env": True}}),
    ],
)
def test_fsspec_gcs_turns_on_trust_env(current: str | None, expected: dict[str, object]) -> None:
    assert json.loads(wrap.fsspec_gcs(current)) == expected


def test_child_env_does_not_modify_base_or_process_environment() -> None:
    base = {"NO_PROXY": "a", "BOTO_CONFIG": "/b", "GOOGLE_APPLICATION_CREDENTIALS": "/k"}
    before_base, before_os = dict(base), dict(os.environ)
    wrap.child_env(base, URL, CA, boto_file=BOTO, metadata_host=MD)
    assert base == before_base
    assert dict(os.environ) == before_os


def test_boto_config_points_at_proxy_and_bundle() -> None:
    text = wrap.boto_config(URL, "/b.pem")
    assert "proxy = 127.0.0.1\n" in text and "proxy_port = 41000\n" in text
    assert "ca_certificates_file = /b.pem\n" in text


@pytest.mark.parametrize(("code", "status"), [(0, 0), (7, 7), (255, 255), (-15, 143), (-2, 130), (-9, 137)])
def test_exit_status_follows_shell_convention(code: int, status: int) -> None:
    assert wrap.exit_status(code) == status


def test_env_changes_lists_set_and_removed() -> None:
    changed, removed = wrap.env_changes({"A": "1", "B": "2", "C": "3"}, {"A": "1", "B": "9", "D": "4"})
    assert changed == {"B": "9", "D": "4"}
    assert removed == ["C"]


def test_prepare_trust_keeps_user_cas_and_only_certificates(tmp_path: Path) -> None:
    import trustme

    from proxy import trust

    confdir = tmp_path / "conf"
    ca_cert = trust.ensure_ca(confdir)
    user_ca = trustme.CA()
    user_file = tmp_path / "corp.pem"
    user_ca.cert_pem.write_to_path(str(user_file))
    with open(user_file, "ab") as f:  # a combined file with a key must not carry the key along
        f.write(user_ca.private_key_pem.bytes())
    out = tmp_path / "out"
    out.mkdir()
    ca = wrap.prepare_trust({"SSL_CERT_FILE": str(user_file), "NODE_EXTRA_CA_CERTS": str(user_file)},
                            confdir, ca_cert, None, out)
    bundle = Path(ca.bundle).read_bytes()
    assert user_ca.cert_pem.bytes().strip() in bundle
    assert ca_cert.read_bytes().strip() in bundle
    assert b"PRIVATE KEY" not in bundle
    node = Path(ca.node_extra).read_bytes()
    assert user_ca.cert_pem.bytes().strip() in node and ca_cert.read_bytes().strip() in node
    assert b"PRIVATE KEY" not in node


def test_prepare_trust_without_user_cas_uses_confdir_bundle(tmp_path: Path) -> None:
    from proxy import trust

    confdir = tmp_path / "conf"
    ca_cert = trust.ensure_ca(confdir)
    ca = wrap.prepare_trust({}, confdir, ca_cert, None, tmp_path)
    assert Path(ca.bundle) == confdir / trust.CLIENT_BUNDLE_NAME
    assert Path(ca.node_extra) == ca_cert
