"""The shared state every fake server reads: tokens, credentials, federation, logs, storage."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from .credentials import CredentialRegistry
from .federation import Federation
from .iam_policy import TokenCreatorGrants
from .identity import IdTokenIssuer
from .records import RequestLog
from .run_access import RunAccess
from .storage_model import Storage
from .tokens import TokenStore


@dataclass
class SharedState:
    tokens: TokenStore
    credentials: CredentialRegistry = field(default_factory=CredentialRegistry)
    federation: Federation = field(default_factory=Federation)
    iam: TokenCreatorGrants = field(default_factory=TokenCreatorGrants)
    id_tokens: IdTokenIssuer = field(default_factory=IdTokenIssuer)
    run: RunAccess = field(default_factory=RunAccess)
    log: RequestLog = field(default_factory=RequestLog)
    storage: Storage = field(default_factory=Storage)
    stopping: threading.Event = field(default_factory=threading.Event)
    # "METHOD /path" of every metadata-server request, so tests can tell which lookups happened.
    metadata_requests: deque[str] = field(default_factory=lambda: deque(maxlen=10_000))
    # Where a non-Google origin received one of our tokens (header name or "path"); never cleared.
    leaks: list[str] = field(default_factory=list)
