"""``python -m benchmarks.lean_proxy ADDONS -- serve ...``: gcp-auth-proxy with a subset of our addons.

For measuring what each addon's hooks cost on the hot path (the "fewer addons" lever); it only
narrows ``addons.default_addons()`` for this process, e.g. ``Resolve,GoogleAuth,AuditLog``.
"""

from __future__ import annotations

import sys
from typing import Any

from mitmproxy import options

from proxy import cli, embed


def main(argv: list[str]) -> int:
    keep = set(argv[0].split(","))
    full = embed.default_addons

    def lean() -> list[Any]:
        return [a for a in full() if type(a).__name__ in keep]

    embed.default_addons = lean  # type: ignore[assignment]
    # The options of the dropped addons no longer exist: ignore them instead of failing.
    options.Options.update = options.Options.update_known  # type: ignore[method-assign]
    return cli.main(argv[2:] if argv[1:2] == ["--"] else argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
