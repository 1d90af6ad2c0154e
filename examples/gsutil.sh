#!/bin/sh
# gsutil (Cloud CLI) under `run`: no `gcloud auth login` needed. run gives it a boto config
# layered over yours (proxy, CA) and placeholder credentials from its metadata endpoint.
set -eu
exec gcp-auth-proxy run -- gsutil ls "gs://${BUCKET:-demo-bucket}"
