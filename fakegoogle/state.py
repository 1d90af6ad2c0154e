"""The shared state every fake server reads: tokens, credentials, logs, storage."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .credentials import CredentialRegistry
from .records import RequestLog
from .storage_model import Storage
from .tokens import TokenStore


@dataclass
class SharedState:
    tokens: TokenStore
    credentials: CredentialRegistry = field(default_factory=CredentialRegistry)
    log: RequestLog = field(default_factory=RequestLog)
    storage: Storage = field(default_factory=Storage)
    stopping: threading.Event = field(default_factory=threading.Event)
    # Where a non-Google origin received one of our tokens (header name or "path"); never cleared.
    leaks: list[str] = field(default_factory=list)
