"""One mitmproxy addon that runs our components in a fixed order.

mitmproxy dispatches every hook to every addon in its chain: per addon and event one coroutine,
one ``safecall`` context and, for flow events, a second pass for the ``update`` hook. With ten
addons of ours that dispatch cost more than our own code (benchmarks/README). The pipeline is
one addon: for each hook it holds, in order, the methods of the components that implement it,
and calls them directly. The components are the same classes ``mitmdump -s addons/X.py`` loads
one by one; they do not know whether they run alone or in the pipeline.

Errors: mitmproxy's ``safecall`` logs a failing addon and lets the flow go on. Here a component
that fails while a request is still on its way up (``http_connect``, ``requestheaders``,
``request``) fails closed: the request gets a JSON 502 and is never sent; the components after
it still run (the audit log records the refusal). Errors in option handling propagate, as they
do from a plain addon.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any

from mitmproxy import hooks, http

from addons.errors import error_response

logger = logging.getLogger(__name__)

# Hooks whose failure must stop the request (it has not gone upstream yet).
_FAIL_CLOSED = frozenset({"http_connect", "requestheaders", "request"})
# Option and lifecycle hooks: errors propagate (an OptionsError is how a bad option is reported).
_PROPAGATE = frozenset({"load", "configure"})


def hook_names() -> list[str]:
    return sorted(hooks.all_hooks)


class Pipeline:
    """Calls each component's hook in list order; one dispatch per hook for mitmproxy."""

    def __init__(self, components: Sequence[object]) -> None:
        self.components = list(components)
        for name in hook_names():
            handlers = [getattr(c, name) for c in self.components if callable(getattr(c, name, None))]
            if handlers:
                setattr(self, name, _dispatcher(name, handlers))

    def __repr__(self) -> str:
        return f"Pipeline({', '.join(type(c).__name__ for c in self.components)})"


def _dispatcher(name: str, handlers: list[Callable[..., Any]]) -> Callable[..., Any]:
    if name in _PROPAGATE:
        def propagate(*args: Any) -> None:
            for handler in handlers:
                handler(*args)
        return propagate
    if any(inspect.iscoroutinefunction(h) for h in handlers):
        async def dispatch_async(*args: Any) -> None:
            for handler in handlers:
                try:
                    result = handler(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
                except Exception as e:  # noqa: BLE001 - one component's bug must not skip the others
                    _failed(name, handler, args, e)
        return dispatch_async

    def dispatch(*args: Any) -> None:
        for handler in handlers:
            try:
                handler(*args)
            except Exception as e:  # noqa: BLE001
                _failed(name, handler, args, e)
    return dispatch


def _failed(name: str, handler: Callable[..., Any], args: tuple[Any, ...], error: Exception) -> None:
    owner = type(getattr(handler, "__self__", handler)).__name__
    logger.error("%s.%s failed: %s: %s", owner, name, type(error).__name__, error)
    logger.debug("%s.%s traceback", owner, name, exc_info=error)
    flow = args[0] if args else None
    if name in _FAIL_CLOSED and isinstance(flow, http.HTTPFlow) and flow.response is None and flow.live:
        flow.metadata.setdefault("gauth", {}).update(auth="failed", error=f"internal error in {owner}")
        flow.response = error_response(
            502, "gcp-auth-proxy failed internally while checking this request; nothing was sent.",
            "proxyInternalError", request=flow.request,
        )
