"""Holds the current Policy (routes and rules): built from the options and the config file,
rebuilt when they change, and on SIGHUP; a rebuild that fails keeps the old policy.

GoogleAuth asks it which credential a request uses, Rules whether the call may happen. Load it
with ``mitmdump -s addons/routing.py --set config=policy.toml`` (GoogleAuth's file loads it too).
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import ctx, exceptions

from addons import options
from addons.policy_file import PolicyError, build_policy, read_policy_file
from addons.policy_model import Policy
from addons.proxy_auth import known_proxy_users

logger = logging.getLogger(__name__)

_INPUTS = {"config", "inject_host", "id_token_host", "impersonate_service_account", "default_deny", "proxy_auth"}


def policy_from_options(opts: Any) -> Policy:
    """The Policy these option values (mitmproxy's or ``Settings``) describe.

    Raises:
        PolicyError: one sentence, ``FILE:LINE`` first when the file is at fault.
    """
    config = getattr(opts, "config", "") or ""
    sections = read_policy_file(config) if config else None
    try:
        users = known_proxy_users(getattr(opts, "proxy_auth", "") or "")
    except ValueError as e:
        raise PolicyError(f"--proxy-auth: {e}") from None
    return build_policy(
        sections,
        inject_host=list(getattr(opts, "inject_host", ()) or ()),
        id_token_host=list(getattr(opts, "id_token_host", ()) or ()),
        impersonate=getattr(opts, "impersonate_service_account", "") or "",
        default_deny=bool(getattr(opts, "default_deny", False)),
        proxy_users=users,
    )


class Routing:
    def __init__(self) -> None:
        self.policy = Policy()
        self._warned: set[str] = set()

    def load(self, loader: Any) -> None:
        options.declare(loader, "config", "inject_host", "id_token_host", "impersonate_service_account",
                        "default_deny")

    def configure(self, updated: set[str]) -> None:
        if not updated & _INPUTS:
            return
        try:
            self._install(policy_from_options(ctx.options))
        except PolicyError as e:
            raise exceptions.OptionsError(str(e)) from None

    def reload(self) -> bool:
        """Re-read the config file (SIGHUP). False, with one log line, when the new one is bad."""
        try:
            policy = policy_from_options(ctx.options)
        except PolicyError as e:
            logger.error("config reload failed, keeping the previous routes and rules: %s", e)
            return False
        self._install(policy)
        logger.info("reloaded routes and rules: %d route(s), %d rule(s), default %s",
                    len(policy.routes), len(policy.rules), policy.default)
        return True

    def _install(self, policy: Policy) -> None:
        self.policy = policy
        for warning in policy.warnings:
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("%s", warning)


addons = [Routing()]
