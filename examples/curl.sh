#!/bin/sh
# curl through a running `gcp-auth-proxy serve`: no credentials in the client.
#   gcp-auth-proxy serve &          # listens on 127.0.0.1:8080
#   ./examples/curl.sh
# Or let `run` start a private proxy for one command:
#   gcp-auth-proxy run -- curl -sS https://storage.googleapis.com/storage/v1/b/BUCKET/o/OBJECT?alt=media
set -eu
PROXY="${PROXY:-http://127.0.0.1:8080}"
CA="${CA:-$(gcp-auth-proxy ca)}"
BUCKET="${BUCKET:-demo-bucket}"
OBJECT="${OBJECT:-hello.txt}"
exec curl -sS --fail-with-body -x "$PROXY" --cacert "$CA" \
    "https://storage.googleapis.com/storage/v1/b/$BUCKET/o/$OBJECT?alt=media"
