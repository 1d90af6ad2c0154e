"""gcp-auth-proxy: the program around the addons (CLI, settings, embedded mitmproxy)."""
