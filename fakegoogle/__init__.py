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
* a Cloud Run-like TLS origin for every ``*.a.run.app`` host (certificate from the googleapis
  CA) that wants Google-signed ID tokens (:mod:`fakegoogle.cloudrun`).

ID tokens (:mod:`fakegoogle.identity`) come from the token endpoint (a service-account assertion
with ``target_audience``), iamcredentials ``generateIdToken`` and the metadata server's
``identity`` path; their keys are at www.googleapis.com/oauth2/v3/certs and /oauth2/v1/certs.
iamcredentials checks delegation chains against a Token Creator grant table
(:mod:`fakegoogle.iam_policy`); every access token records the principal it speaks for.

Use :class:`FakeGoogle` in-process or ``python -m fakegoogle --workdir DIR``.
``fg.requests`` records API requests to the googleapis and other origins;
calls to token endpoints (oauth2, sts, iamcredentials, metadata token and identity) are
counted by ``token_requests`` and the per-endpoint counters instead.
"""

from .fake import FakeGoogle
from .records import RecordedRequest

__all__ = ["FakeGoogle", "RecordedRequest"]
