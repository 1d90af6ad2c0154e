"""The public FakeGoogle facade: wires state, certificates and servers together."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

from .certs import issue_leaf, make_ca, make_tls
from .cloudrun import CloudRunApp
from .connect_proxy import ConnectProxy
from .credentials import DEFAULT_TOKEN_URI, write_json
from .federation import ALLOWED_AUDIENCE, DEFAULT_SUBJECT, FEDERATED_SA, IMPERSONATED_SA
from .googleapis import GoogleApisApp
from .identity import unique_id
from .metadata import AZURE_TOKEN_PATH, MetadataApp
from .metadata import SA_EMAIL as METADATA_SA
from .other_origin import OtherOriginApp
from .pubsub import PubsubModel
from .pubsub_faults import FaultServer
from .pubsub_server import CallEvents, GrpcSite, other_grpc_site, pubsub_site
from .records import RecordedRequest
from .server import ServerThread, Site
from .state import SharedState
from .tokens import TokenStore

GOOGLE_HOSTNAMES = ["*.googleapis.com", "googleapis.com"]
OTHER_HOSTNAMES = ["www.example.test", "example.test", "grpc.example.test"]
RUN_HOSTNAMES = ["*.a.run.app", "*.cloudfunctions.net"]


class FakeGoogle:
    """Local stand-in for Google's OAuth, metadata and API endpoints (see package docs)."""

    def __init__(self, workdir: Path, token_lifetime: int = 3600) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state = SharedState(TokenStore(token_lifetime))
        google_ca, google_ca_pem = make_ca(self.workdir, "google")
        google_tls = issue_leaf(google_ca, google_ca_pem, self.workdir, "google", GOOGLE_HOSTNAMES)
        # Cloud Run's certificate comes from the same CA: one --upstream-ca trusts both, as
        # public roots trust both in real life.
        run_tls = issue_leaf(google_ca, google_ca_pem, self.workdir, "run", RUN_HOSTNAMES)
        other_tls = make_tls(self.workdir, "other", OTHER_HOSTNAMES)
        self.google_ca_pem: Path = google_tls.ca_pem
        self.run_ca_pem: Path = run_tls.ca_pem  # the same file as google_ca_pem
        self.other_ca_pem: Path = other_tls.ca_pem
        self._sites = {
            "googleapis": Site(GoogleApisApp(self._state), google_tls.cert_pem, google_tls.key_pem),
            "metadata": Site(MetadataApp(self._state)),
            "other": Site(OtherOriginApp(self._state), other_tls.cert_pem, other_tls.key_pem),
            "run": Site(CloudRunApp(self._state), run_tls.cert_pem, run_tls.key_pem),
        }
        self._server: ServerThread | None = None
        self.googleapis_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.metadata_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.other_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.run_addr: tuple[str, int] = ("127.0.0.1", 0)
        # gRPC (grpcio servers, their own threads): Pub/Sub and the test service on
        # pubsub.googleapis.com, the test service on grpc.example.test, and a raw HTTP/2 upstream
        # that resets streams (tests reach it under another *.googleapis.com name).
        self.pubsub = PubsubModel()
        self.grpc_calls = CallEvents()
        self._grpc_sites: list[GrpcSite | FaultServer] = [
            pubsub_site(self._state, self.pubsub, self.grpc_calls, google_tls.cert_pem, google_tls.key_pem),
            other_grpc_site(self._state, self.grpc_calls, other_tls.cert_pem, other_tls.key_pem),
            FaultServer(self._state, self.grpc_calls, google_tls.cert_pem, google_tls.key_pem),
        ]
        self.pubsub_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.grpc_other_addr: tuple[str, int] = ("127.0.0.1", 0)
        self.grpc_faults_addr: tuple[str, int] = ("127.0.0.1", 0)
        # A corporate-style CONNECT proxy in front of all of it (tests of --upstream-proxy).
        self.connect_proxy = ConnectProxy()
        self.connect_proxy_addr: tuple[str, int] = ("127.0.0.1", 0)

    # --- lifecycle -------------------------------------------------------
    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeGoogle already started")
        self.googleapis_addr = self._sites["googleapis"].bind()
        self.metadata_addr = self._sites["metadata"].bind()
        self.other_addr = self._sites["other"].bind()
        self.run_addr = self._sites["run"].bind()
        self._state.stopping.clear()
        self._server = ServerThread(list(self._sites.values()))
        self._server.start()
        self.pubsub_addr, self.grpc_other_addr, self.grpc_faults_addr = (s.start() for s in self._grpc_sites)
        self.connect_proxy_addr = self.connect_proxy.start(
            {name: self.googleapis_addr for name in GOOGLE_HOSTNAMES}
            | {name: self.other_addr for name in ("*.example.test", "example.test")}
            | {name: self.run_addr for name in RUN_HOSTNAMES})
        return self

    def stop(self) -> None:
        """Stop serving; parked "hang" requests are released first so shutdown is quick."""
        if self._server is None:
            return
        self._state.stopping.set()
        self.grpc_calls.clear()  # opens every gate a call may still wait on
        for site in self._grpc_sites:
            site.stop()
        self.pubsub.wake()
        self._server.stop()
        self._server = None
        self.connect_proxy.stop()

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

    def write_external_account(
        self, path: Path, *, source: str = "file", impersonate: bool = False,
        subject: str = DEFAULT_SUBJECT, token_format: str = "text", quota_project: str | None = None,
    ) -> Path:
        """An ``external_account`` (workload identity federation) config at ``path``.

        ``source="file"``: an OIDC token for ``subject`` is written to ``<path>.token`` (JSON
        ``{"id_token": ...}`` with ``token_format="json"``), as a Kubernetes projected token.
        ``source="url"``: the metadata server's Azure-style endpoint mints one per fetch.
        ``impersonate``: adds ``service_account_impersonation_url`` for ``FEDERATED_SA``.
        """
        path = Path(path)
        federation = self._state.federation
        if source == "file":
            credential_source = federation.write_subject_token_file(
                path.with_name(path.name + ".token"), subject, token_format=token_format
            )
        elif source == "url":
            host, port = self.metadata_addr
            query = urlencode({"api-version": "2018-02-01", "resource": ALLOWED_AUDIENCE})
            credential_source = {
                "url": f"http://{host}:{port}{AZURE_TOKEN_PATH}?{query}",
                "headers": {"Metadata": "True"},
                "format": {"type": "json", "subject_token_field_name": "access_token"},
            }
        else:
            raise ValueError(f"source must be 'file' or 'url', not {source!r}")
        info = federation.external_account_info(
            credential_source, impersonate=FEDERATED_SA if impersonate else None,
            quota_project=quota_project,
        )
        return write_json(path, info)

    def mint_subject_token(
        self, subject: str = DEFAULT_SUBJECT, audience: str = ALLOWED_AUDIENCE, *,
        lifetime: int = 3600, now: float | None = None,
    ) -> str:
        """An OIDC token from the fake's issuer, as a workload's identity provider would issue it."""
        return self._state.federation.mint_subject_token(subject, audience, lifetime=lifetime, now=now)

    def write_impersonated_service_account(self, path: Path, *, target: str = IMPERSONATED_SA) -> Path:
        """An ``impersonated_service_account`` ADC file whose source is a gcloud user."""
        source = self._state.credentials.authorized_user_info()
        return self._state.federation.write_impersonated_service_account(Path(path), source, target)

    def write_external_account_authorized_user(self, path: Path) -> Path:
        """A workforce identity federation user's ADC file, refreshed at sts /v1/oauthtoken."""
        return self._state.federation.write_external_account_authorized_user(Path(path))

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

    def token_requests_to(self, endpoint: str) -> int:
        """Requests to one token endpoint: oauth2, oauth2_id_token, metadata, metadata_identity,
        sts_exchange, sts_refresh, generate_access_token, generate_id_token (``token_requests``
        is their sum)."""
        return self._state.tokens.requests_to(endpoint)

    @property
    def sts_exchanges(self) -> int:
        """Token-exchange requests to sts.googleapis.com/v1/token (workload identity federation)."""
        return self._state.tokens.requests_to("sts_exchange")

    @property
    def sts_refreshes(self) -> int:
        """refresh_token requests to sts.googleapis.com/v1/oauthtoken (workforce users)."""
        return self._state.tokens.requests_to("sts_refresh")

    @property
    def generate_access_token_calls(self) -> int:
        """Requests to iamcredentials serviceAccounts/SA:generateAccessToken (impersonation)."""
        return self._state.tokens.requests_to("generate_access_token")

    @property
    def oauth2_token_requests(self) -> int:
        """Requests to oauth2.googleapis.com/token (service-account keys, gcloud users)."""
        return self._state.tokens.requests_to("oauth2")

    def wait_for_token_requests(self, count: int, timeout: float = 20.0) -> bool:
        """Block until ``token_requests`` reaches ``count``; False on timeout."""
        return self._state.tokens.wait_for_requests(count, timeout)

    def token_kind(self, token: str) -> str | None:
        """Which endpoint issued ``token``: oauth2, metadata, sts, sts_refresh or iamcredentials."""
        return self._state.tokens.kind_of(token)

    @property
    def metadata_requests(self) -> list[str]:
        """``METHOD /path`` of each metadata-server request since ``clear_requests()``."""
        return list(self._state.metadata_requests)

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
        """Where a non-Google origin ever received a token this fake issued (never cleared):
        a header name or "path"; ``run:NAME`` when an access token reached the Cloud Run origin."""
        return list(self._state.leaks)

    def issue_token(self, principal: str | None = None) -> str:
        """A valid access token straight from the store, for a test or benchmark that calls an API
        directly (as the proxy would after a token fetch); it is on ``issued_tokens`` like any other.
        ``principal`` is who it speaks for at iamcredentials (None: nobody holds grants for it)."""
        return self._state.tokens.issue(principal=principal)[0]

    def principal_of(self, token: str) -> str | None:
        """Who ``token`` speaks for: a service account's or user's email, or a federated
        ``principal://`` name; None for a token this fake did not issue."""
        return self._state.tokens.principal_of(token)

    # --- IAM: who may impersonate whom -----------------------------------
    def grant_token_creator(self, member_email: str, target_email: str) -> None:
        """Give ``member_email`` (or a ``principal://`` name) "Service Account Token Creator" on
        service account ``target_email`` (which thereby exists)."""
        self._state.iam.grant(member_email, target_email)

    def revoke_token_creator(self, member_email: str, target_email: str) -> None:
        self._state.iam.revoke(member_email, target_email)

    def add_service_account(self, email: str) -> None:
        """Make ``email`` exist (iamcredentials answers 403 instead of 404 without a grant)."""
        self._state.iam.add_account(email)

    # --- ID tokens and the Cloud Run origin ------------------------------
    def verify_id_token(self, token: str, audience: str | None) -> dict[str, Any]:
        """The claims of an ID token this fake signed for ``audience`` (None: any) and that has
        not expired; else ValueError with the reason."""
        return self._state.id_tokens.verify(token, audience)

    def mint_id_token(
        self, audience: str, email: str = METADATA_SA, *, include_email: bool = True,
        lifetime: int = 3600, now: float | None = None,
    ) -> str:
        """An ID token signed by the fake's Google key, as a test would craft one (e.g. expired,
        with ``now`` in the past)."""
        return self._state.id_tokens.mint(audience, email, include_email=include_email,
                                          lifetime=lifetime, now=now)

    @property
    def id_token_key_id(self) -> str:
        """``kid`` of the fake's ID-token signing key (published at www.googleapis.com/oauth2/v3/certs)."""
        return self._state.id_tokens.key_id

    @property
    def issued_id_tokens(self) -> list[str]:
        return self._state.id_tokens.issued

    @staticmethod
    def unique_id(email: str) -> str:
        """A service account's numeric id: ``sub`` and ``azp`` of its ID tokens."""
        return unique_id(email)

    def add_run_audience(self, host: str, audience: str) -> None:
        """Also accept ``audience`` at the Cloud Run ``host`` (a custom audience). An OAuth client
        id (``*.apps.googleusercontent.com``) makes the host IAP-like: only client ids then."""
        self._state.run.add_audience(host, audience)

    def set_run_invokers(self, host: str, emails: Iterable[str] | None) -> None:
        """Only these callers (``roles/run.invoker``) may call ``host``; None: any valid token."""
        self._state.run.set_invokers(host, emails)

    def run_requests(self) -> list[RecordedRequest]:
        """What reached the Cloud Run origin since ``clear_requests()``."""
        return [r for r in self.requests if r.server == "run"]

    def reset_iam(self) -> None:
        """Drop token-creator grants, accounts tests added, Cloud Run audiences and invokers
        (the per-test ``fake`` fixture calls this)."""
        self._state.iam.reset()
        self._state.run.reset()

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

    def wait_for_requests(self, path_prefix: str, count: int = 1, timeout: float = 20.0) -> list[RecordedRequest]:
        """The recorded requests whose path starts with ``path_prefix``, once there are ``count``
        (a request is recorded when the fake answers it); fewer after ``timeout``."""
        return self._state.log.wait_for(lambda r: r.path.startswith(path_prefix), count, timeout)

    def clear_requests(self) -> None:
        self._state.log.clear()
        self._state.metadata_requests.clear()
        self.grpc_calls.clear()

    def reset_storage(self) -> None:
        """Drop every bucket and object tests created; keep demo-bucket/hello.txt and bench."""
        self._state.storage.reset()
