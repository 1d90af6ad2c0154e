"""mitmproxy addons for gcp-auth-proxy: one concern each, also loadable with ``mitmdump -s``.

The composition root is ``addons.composition.build()``; this package stays import-light.
"""

from __future__ import annotations

from typing import Any


def default_addons() -> list[Any]:
    """Every component, wired, in hook order (see ``Components.ordered``)."""
    from addons.composition import build

    return build().ordered()
