"""``python -m benchmarks.separate_addons serve ...``: gcp-auth-proxy with our components as
separate mitmproxy addons under mitmproxy's own dispatcher (the design before addons/pipeline.py
and proxy/dispatch.py), to measure what those save."""

from __future__ import annotations

import sys

from proxy import cli, embed


def main(argv: list[str]) -> int:
    embed.USE_PIPELINE = False
    embed.USE_FAST_DISPATCH = False
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
