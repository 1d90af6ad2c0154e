#!/bin/sh
# The addons alone, in a stock mitmdump (no gcp-auth-proxy CLI): each addon file loads with -s.
# Install the project first (pip install -e .) so `from addons import ...` resolves.
#   PORT=8080 ./examples/mitmdump.sh
#   curl -x http://127.0.0.1:8080 --cacert ~/.mitmproxy/mitmproxy-ca-cert.pem \
#        https://storage.googleapis.com/storage/v1/b/BUCKET/o
# Unlike `serve`, this intercepts TLS for every host (add --allow-hosts to narrow it) and loads
# no policy or audit addons. Extra mitmdump options can follow, e.g. --set resolve=...
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec mitmdump --listen-host 127.0.0.1 --listen-port "${PORT:-8080}" \
    -s "$ROOT/addons/resolve.py" \
    -s "$ROOT/addons/placeholder.py" \
    -s "$ROOT/addons/google_auth.py" \
    --set inject_host='*.googleapis.com' \
    --set stream_large_bodies=1m \
    "$@"
