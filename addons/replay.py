"""One retry after a 401: the same small request, a fresh token, the very peer the first attempt used.

The first attempt already passed every check (destination, policy, metadata guard, upstream TLS
verification), so the retry goes to that connection's address and name and nowhere else: the
URL is never rebuilt from the request, and nothing is resolved again. Through ``--upstream-proxy``
it goes the same way as the first attempt: to the address the upstream proxy was reached at,
with a CONNECT for the same target. Both directions are bounded; a larger answer is not buffered
(the client gets the 401, and the next request the refreshed token).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import certifi
from urllib3.connection import HTTPSConnection

from addons.token_transport import open_tunnel
from addons.upstream_proxy import ProxySpec

REPLAY_MAX_BODY = 64 * 1024  # request bodies up to this size are held so they can be replayed
REPLAY_MAX_RESPONSE = 1024 * 1024  # a replayed answer beyond this is given up, not buffered
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding",
    "upgrade", "te", "trailer", "host", ":authority", "content-length",
})


class Tunnel(NamedTuple):
    """The first attempt's way through ``--upstream-proxy``: the proxy and the CONNECT target."""

    proxy: ProxySpec
    target: tuple[str, int]


class ReplayTarget(NamedTuple):
    name: str  # TLS server name, certificate check and Host
    port: int
    peer: tuple[str, int]  # the address the first attempt connected to (the upstream proxy's, with a tunnel)
    tunnel: Tunnel | None = None


class Replayed(NamedTuple):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class TooLarge(Exception):
    """The replayed answer is larger than REPLAY_MAX_RESPONSE."""


class _PinnedConnection(HTTPSConnection):
    """Connects to a fixed address (or through a CONNECT tunnel from it) while TLS and Host use the name."""

    def __init__(self, peer: tuple[str, int], tunnel: Tunnel | None, *args: Any, **kwargs: Any) -> None:
        self._peer = peer
        self._through = tunnel
        super().__init__(*args, **kwargs)

    def _new_conn(self) -> socket.socket:
        if self._through is not None:
            return open_tunnel(self._through.proxy, self._through.target, self.timeout,  # type: ignore[arg-type]
                               dial=self._peer)
        return socket.create_connection(self._peer, timeout=self.timeout)  # type: ignore[arg-type]


def replay_headers(headers: Iterable[tuple[str, str]], fresh: Mapping[str, str], target: ReplayTarget) -> dict[str, str]:
    """The request's end-to-end headers with the fresh token's headers and the target's Host."""
    out = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
    for name in list(out):
        if name.lower() in fresh:
            del out[name]
    out.update(fresh)
    out["Host"] = target.name if target.port == 443 else f"{target.name}:{target.port}"
    return out


def replay(
    target: ReplayTarget,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    ca_bundle: str | None,
    connect_timeout: float,
    read_timeout: float,
) -> Replayed:
    """Send the request once over a new verified TLS connection to ``target.peer``.

    Raises:
        ValueError: the path is not origin-form (it could name another authority).
        TooLarge: the answer exceeds REPLAY_MAX_RESPONSE.
        OSError and urllib3 errors: the connection or TLS failed.
    """
    if not path.startswith("/") or len(body) > REPLAY_MAX_BODY:
        raise ValueError("not a replayable request")
    conn = _PinnedConnection(
        target.peer, target.tunnel, target.name, target.port, timeout=connect_timeout,
        cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle or certifi.where(),
    )
    try:
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(read_timeout)
        conn.request(method, path, body=body or None, headers=dict(headers), preload_content=False)
        response = conn.getresponse()
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(65536, decode_content=False):
            size += len(chunk)
            if size > REPLAY_MAX_RESPONSE:
                raise TooLarge(f"the replayed answer is larger than {REPLAY_MAX_RESPONSE} bytes")
            chunks.append(chunk)
        out_headers = [
            (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in response.headers.items()
            if k.lower() not in _HOP_BY_HOP
        ]
        return Replayed(response.status, out_headers, b"".join(chunks))
    finally:
        conn.close()
