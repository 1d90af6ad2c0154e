"""Benchmarks: gcp-auth-proxy against the direct path and plain mitmdump (``python -m benchmarks``)."""
