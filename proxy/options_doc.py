"""Rewrites the README's option table from the option list: ``python -m proxy.options_doc README.md``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from proxy.cli import options_markdown

BEGIN = "<!-- options table: generated from addons/options.py by `make readme-options`; a test checks it -->\n"
END = "<!-- end options table -->\n"
_BLOCK = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)


def with_table(readme: str) -> str:
    """The README text with its generated block replaced by the current table."""
    if not _BLOCK.search(readme):
        raise ValueError("the README has no generated options block")
    return _BLOCK.sub(lambda _m: BEGIN + options_markdown() + END, readme)


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "README.md")
    path.write_text(with_table(path.read_text("utf-8")), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
