"""A hook dispatcher for mitmproxy's master that skips addons without the hook.

mitmproxy's ``AddonManager.trigger_event`` visits every addon in the chain for every event,
creating a coroutine and a ``safecall`` context each time, and runs a second full pass for the
``update`` hook after each flow event (which none of our addons implement). Per request that is
dozens of empty visits; the profile showed it ahead of our own code. ``FastAddonManager`` keeps,
per hook name, the list of (addon, method) pairs that implement it — built on first use, cleared
whenever the chain changes — and calls only those, with the same ``safecall`` error handling and
``AddonHalt`` semantics.

This subclasses mitmproxy's AddonManager (not a documented stable API): ``install()`` is used by
proxy/embed.py only, and only for the mitmproxy versions it was written against; any other
version keeps mitmproxy's own manager.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from mitmproxy import addonmanager, exceptions, hooks, master
from mitmproxy.version import VERSION

logger = logging.getLogger(__name__)

SUPPORTED = ("12.",)  # written against mitmproxy 12.x's addonmanager.py


class FastAddonManager(addonmanager.AddonManager):
    """AddonManager whose trigger_event calls only the addons that implement the hook."""

    def __init__(self, m: master.Master) -> None:
        super().__init__(m)
        self._handlers: dict[str, list[tuple[Any, Any]]] = {}

    def _forget(self) -> None:
        self._handlers.clear()

    def add(self, *addons: Any) -> None:
        self._forget()
        super().add(*addons)

    def remove(self, addon: Any) -> None:
        self._forget()
        super().remove(addon)

    def clear(self) -> None:
        self._forget()
        super().clear()

    def _handlers_for(self, event: hooks.Hook) -> list[tuple[Any, Any]]:
        found = self._handlers.get(event.name)
        if found is None:
            found = [pair for a in self.chain for pair in self._iter_hooks(a, event)]
            self._handlers[event.name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        args = event.args()
        for _addon, func in self._handlers_for(event):
            try:
                with addonmanager.safecall():
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return


def install(m: master.Master) -> None:
    """Give ``m`` the fast manager, before any addon is added. No-op on other mitmproxy versions."""
    if not VERSION.startswith(SUPPORTED):
        logger.warning("mitmproxy %s is not one this dispatcher was written for; using its own", VERSION)
        return
    if len(m.addons):
        raise RuntimeError("install the dispatcher before adding addons")
    m.options.changed.disconnect(m.addons._configure_all)
    m.addons = FastAddonManager(m)
