"""A real client for the audit tests: google-cloud-storage and google-cloud-compute, no credentials.

Run with HTTPS_PROXY and REQUESTS_CA_BUNDLE pointing at the proxy; prints one JSON line of results.
"""

from __future__ import annotations

import json
import sys

from google.auth.credentials import AnonymousCredentials


def main(action: str) -> None:
    result: dict[str, object] = {}
    if action == "storage":
        from google.cloud import storage

        client = storage.Client(project="fake-project", credentials=AnonymousCredentials())
        bucket = client.bucket("demo-bucket")
        small = bucket.blob("audit/small.txt")
        small.upload_from_string(b"x" * 1000, content_type="text/plain")
        big = bucket.blob("audit/big.bin")
        big.upload_from_string(b"y" * (3 * 1024 * 1024), content_type="application/octet-stream")
        result["small"] = len(small.download_as_bytes())
        result["big"] = len(big.download_as_bytes())
    elif action == "compute":
        from google.cloud import compute_v1

        client = compute_v1.InstancesClient(credentials=AnonymousCredentials())
        result["instances"] = [i.name for i in client.list(project="fake-project", zone="us-central1-a")]
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
