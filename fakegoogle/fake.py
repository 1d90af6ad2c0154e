"""The public FakeGoogle facade: wires state, certificates and servers together."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Self

from .certs import make_tls
from .credentials import DEFAULT_TOKEN_URI
from .googleapis import GoogleApisApp
from .metadata import MetadataApp
from .other_origin import OtherOriginApp
from .records import RecordedRequest
from .server import ServerThread, Site
from .state import SharedState
from .tokens import TokenStore

GOOGLE_HOSTNAMES = ["*.googleapis.com", "googleapis.com"]
OTHER_HOSTNAMES = ["www.example.test", "example.test"]


class FakeGoogle:
    """Local stand-in for Google's OAuth, metadata and API endpoints (see package docs)."""

    def __init__(self, workdir: Path, token_lifetime: int = 3600) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state = SharedState(TokenStore(token_lifetime))
        google_tls = make_tls(self.workdir, "google", GOOGLE_HOSTNAMES)
        other_tls = make_tls(self.workdir, "other", OTHER_HOSTNAMES)
        self.google_ca_pem: Path = google_tls.ca_pem
        self.other_ca_pem: Path = other_tls.ca_pem
        self._sites = {
            "googleapis": Site(GoogleApisApp(self._state), google_tls.cert_pem, google_tls.key_pem),
            "metadata": Site(MetadataApp(self._state)),
            "other": Site(OtherOriginApp(self._state), other_tls.cert_pem, other_tls.key_pem),
        }
        self._server: ServerThread | None = None
        self.googleapis_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.metadata_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.other_addr: tuple[str, int] = ("127.0.0.1", 0)

    # --- lifecycle -------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeGoogle already started")
        self.googleapis_addr = self._sites["googleapis"].bind()
        self.metadata_addr = self._sites["metadata"].bind()
        self.other_addr = self._sites["other"].bind()
        self._state.stopping.clear()
        self._server = ServerThread(list(self._sites.values()))
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving; parked "hang" requests are released first so shutdown is quick."""
        if self._server is None:
            return
        self._state.stopping.set()
        self._server.stop()
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- credentials -----------------------------------------------------
    def write_service_account_key(
        self, path: Path, *, quota_project: str | None = None, token_uri: str = DEFAULT_TOKEN_URI
    ) -> Path:
        return self._state.credentials.write_service_account_key(
            Path(path), quota_project=quota_project, token_uri=token_uri
        )

    def write_authorized_user(self, path: Path, *, quota_project: str | None = None) -> Path:
        return self._state.credentials.write_authorized_user(
            Path(path), quota_project=quota_project
        )

    def env_for_metadata(self) -> dict[str, str]:
        hostport = f"{self.metadata_addr[0]}:{self.metadata_addr[1]}"
        return {"GCE_METADATA_HOST": hostport, "GCE_METADATA_IP": hostport}

    # --- tokens ----------------------------------------------------------
    @property
    def token_fetches(self) -> int:
        return self._state.tokens.fetches

    @property
    def token_requests(self) -> int:
        return self._state.tokens.requests

    @property
    def issued_tokens(self) -> list[str]:
        return self._state.tokens.issued

    @property
    def token_lifetime(self) -> int:
        return self._state.tokens.lifetime

    @token_lifetime.setter
    def token_lifetime(self, seconds: int) -> None:
        self._state.tokens.lifetime = int(seconds)

    @property
    def leaks(self) -> list[str]:
        """Where a non-Google origin ever received a token this fake issued (never cleared)."""
        return list(self._state.leaks)

    def revoke(self, token: str) -> None:
        self._state.tokens.revoke(token)

    def revoke_all(self) -> None:
        self._state.tokens.revoke_all()

    def set_token_failure(self, mode: str | None) -> None:
        self._state.tokens.set_failure(mode)

    # --- request log -----------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        return self._state.log.snapshot()

    def clear_requests(self) -> None:
        self._state.log.clear()

    def reset_storage(self) -> None:
        """Drop every bucket and object tests created; keep demo-bucket/hello.txt and bench."""
        self._state.storage.reset()
