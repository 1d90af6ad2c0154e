"""Our own exit statuses and the one error type the CLI turns into a sentence on stderr."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit codes of gcp-auth-proxy itself (``run`` passes the child's code through unchanged).

    sysexits.h values, so they rarely collide with a wrapped tool's own codes.
    """

    OK = 0
    USAGE = 64  # bad option or configuration
    UNAVAILABLE = 69  # the proxy could not start (port in use, listener refused)
    SOFTWARE = 70  # a bug: an unexpected exception
    CANTCREAT = 73  # confdir / CA / bundle could not be written
    NOPERM = 77  # permission refused (e.g. nested run refused)
    NOEXEC = 126  # `run`: the command exists but could not be executed (as a shell reports it)
    NOTFOUND = 127  # `run`: the command was not found (as a shell reports it)


class ProxyError(Exception):
    """A failure we explain in one sentence; ``status`` is the exit code."""

    def __init__(self, message: str, status: ExitStatus = ExitStatus.USAGE) -> None:
        super().__init__(message)
        self.status = status
