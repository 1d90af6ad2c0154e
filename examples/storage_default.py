"""An unmodified script using default credentials, under `run`:

    gcp-auth-proxy run -- python examples/storage_default.py [BUCKET]

`storage.Client()` finds "a GCE metadata server" (run's placeholder endpoint) and gets a
placeholder token; the proxy swaps it for the real one. The script never holds a real token.
"""

from __future__ import annotations

import sys

from google.cloud import storage


def main(bucket: str = "demo-bucket") -> None:
    client = storage.Client()
    for blob in client.list_blobs(bucket):
        print(blob.name)


if __name__ == "__main__":
    main(*sys.argv[1:2])
