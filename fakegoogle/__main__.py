"""CLI: ``python -m fakegoogle --workdir DIR [--token-lifetime N]``.

Starts every fake server, writes ``service_account.json`` and
``authorized_user.json`` into DIR, prints one JSON line (addresses as
"host:port", CA and credential paths, admin URL) and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path
from typing import Any

from .fake import FakeGoogle


def hostport(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def describe(fg: FakeGoogle, sa_key: Path, user: Path) -> dict[str, Any]:
    """The JSON line other processes parse to find the fake."""
    return {
        "googleapis": hostport(fg.googleapis_addr),
        "metadata": hostport(fg.metadata_addr),
        "other": hostport(fg.other_addr),
        "run": hostport(fg.run_addr),
        "google_ca_pem": str(fg.google_ca_pem),
        "other_ca_pem": str(fg.other_ca_pem),
        "run_ca_pem": str(fg.run_ca_pem),
        "service_account_key": str(sa_key),
        "authorized_user": str(user),
        "admin_url": f"http://{hostport(fg.metadata_addr)}/_fake",
        "env_for_metadata": fg.env_for_metadata(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fakegoogle", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--token-lifetime", type=int, default=3600)
    args = parser.parse_args(argv)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with FakeGoogle(args.workdir, token_lifetime=args.token_lifetime) as fg:
        sa_key = fg.write_service_account_key(args.workdir / "service_account.json")
        user = fg.write_authorized_user(args.workdir / "authorized_user.json")
        print(json.dumps(describe(fg, sa_key, user)), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
