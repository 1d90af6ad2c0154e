"""google-cloud-storage through a running `serve`, holding no credentials at all.

    eval "$(gcp-auth-proxy env)"       # HTTPS_PROXY, REQUESTS_CA_BUNDLE, ...
    python examples/storage_anonymous.py [BUCKET [OBJECT]]

AnonymousCredentials send no Authorization header; the proxy adds the real token.
"""

from __future__ import annotations

import sys

from google.auth.credentials import AnonymousCredentials
from google.cloud import storage


def main(bucket: str = "demo-bucket", name: str = "hello.txt") -> None:
    client = storage.Client(project="-", credentials=AnonymousCredentials())
    print(client.bucket(bucket).blob(name).download_as_text(), end="")


if __name__ == "__main__":
    main(*sys.argv[1:3])
