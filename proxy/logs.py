"""Operational logging (not the audit log): quiet, human, to stderr or a file."""

from __future__ import annotations

import json
import logging
import sys
import time

from addons import redact


class _Redacting(logging.Filter):
    """Last line of defence: nothing token-shaped reaches a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact.redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


HANDLER_NAME = "gcp-auth-proxy"  # so a host program (or a test) can find and remove our handler


def configure_logging(*, verbose: bool = False, log_file: str | None = None, fmt: str = "text",
                      quiet: bool = False) -> None:
    """Our loggers at INFO (WARNING when ``quiet``), mitmproxy's at WARNING."""
    handler: logging.Handler
    handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("gcp-auth-proxy: %(message)s"))
    handler.addFilter(_Redacting())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    ours = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    for name in ("addons", "proxy"):
        logging.getLogger(name).setLevel(ours)
    logging.getLogger("mitmproxy").setLevel(logging.INFO if verbose else logging.WARNING)
