"""fakegoogle: a local fake of the Google endpoints gcp-auth-proxy talks to.

Three servers on 127.0.0.1 (ephemeral ports), one background thread:

* googleapis TLS origin (HTTP/1.1 + h2 via ALPN, cert for *.googleapis.com),
  routed on Host: oauth2 /token, sts /v1/token and /v1/oauthtoken (workload and
  workforce identity federation), iamcredentials generateAccessToken, storage
  (JSON + XML + uploads), compute, bigquery, cloudresourcemanager, and GET /echo
  on every host.
* plain-HTTP GCE metadata server (and an Azure-style managed identity endpoint for
  URL-sourced federation); it also carries the admin endpoints under /_fake/
  (see :mod:`fakegoogle.metadata`) for out-of-process control.
* a non-Google TLS origin (www.example.test) signed by a different CA.

Use :class:`FakeGoogle` in-process or ``python -m fakegoogle --workdir DIR``.
``fg.requests`` records API requests to the googleapis and other origins;
calls to token endpoints (oauth2, sts, iamcredentials, metadata token) are
counted by ``token_requests`` and the per-endpoint counters instead.
"""

from .fake import FakeGoogle
from .records import RecordedRequest

__all__ = ["FakeGoogle", "RecordedRequest"]
