#!/bin/sh
# rclone under `run`, with an on-the-fly :gcs: remote (no rclone config needed).
# Go reads HTTPS_PROXY and SSL_CERT_FILE, both set by run; rclone's own auth does not matter.
set -eu
exec gcp-auth-proxy run -- rclone lsf ":gcs:${BUCKET:-demo-bucket}"
