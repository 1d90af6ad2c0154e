"""``python -m proxy``: the same entry point as the ``gcp-auth-proxy`` script."""

from proxy.launch import console_main

if __name__ == "__main__":
    console_main()
