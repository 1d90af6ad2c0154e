"""Throwaway CAs and leaf certificates (trustme), written to the workdir as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class TlsFiles:
    ca_pem: Path
    cert_pem: Path  # leaf + chain
    key_pem: Path


def make_ca(workdir: Path, label: str) -> tuple[trustme.CA, Path]:
    """A fresh CA, its certificate written to ``<label>-ca.pem``."""
    ca = trustme.CA(organization_name=f"fakegoogle {label} CA")
    ca_pem = workdir / f"{label}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return ca, ca_pem


def issue_leaf(ca: trustme.CA, ca_pem: Path, workdir: Path, label: str, hostnames: list[str]) -> TlsFiles:
    """A leaf cert for ``hostnames`` signed by ``ca``, as ``<label>-cert.pem``/``-key.pem``."""
    leaf = ca.issue_cert(*hostnames)
    files = TlsFiles(ca_pem, workdir / f"{label}-cert.pem", workdir / f"{label}-key.pem")
    leaf.private_key_pem.write_to_path(str(files.key_pem))
    with open(files.cert_pem, "wb") as fh:
        fh.writelines(blob.bytes() for blob in leaf.cert_chain_pems)
    files.key_pem.chmod(0o600)
    return files


def make_tls(workdir: Path, label: str, hostnames: list[str]) -> TlsFiles:
    """Create a fresh CA and a leaf cert for ``hostnames``; a separate CA per origin
    lets tests prove which origin a client actually reached."""
    ca, ca_pem = make_ca(workdir, label)
    return issue_leaf(ca, ca_pem, workdir, label, hostnames)
