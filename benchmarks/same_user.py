"""What the same-user check costs per connection (``python -m benchmarks.same_user [PART ...]``).

Parts (default both):

``lookup [SOCKETS]``  µs per owner lookup, in-process: the pure /proc/net/tcp functions on a
    synthetic table of SOCKETS rows (default 1,000), then on this machine with SOCKETS/2 real
    loopback connections open (SOCKETS rows of ours, plus whatever else is there): reading the
    two tables, the /proc lookup, the sock_diag lookup, and the gate as the proxy calls it.
``newconn [N [ROUNDS]]``  the proxy's CPU per new client connection with the check on (the
    default, sock_diag), on with the /proc fallback (sock_diag made to fail in that process), and
    off (``--allow-uid any``): three proxy processes in rotating rounds, N fresh connections each
    (default 300, 5 rounds), for an intercepted host (CONNECT, TLS from the proxy's CA, one GET)
    and for a tunnelled one (CONNECT to a host the proxy does not intercept, TLS with the
    origin). Ratios to "off" are paired per round, so drift in load cancels.

Each measurement prints one JSON line; the load (``uptime``) is printed at start and end.
"""

from __future__ import annotations

import json
import os
import random
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from addons import same_user
from addons.same_user import Gate, owner_uid, parse_proc_net_tcp


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return f"load average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}"


def _per_call_us(fn: Callable[[], object], seconds: float = 0.5, min_calls: int = 20) -> float:
    """Median over 5 batches of µs per call (a batch lasts about seconds/5)."""
    fn()
    start = time.perf_counter()
    calls = 0
    while calls < min_calls or time.perf_counter() - start < seconds / 5:
        fn()
        calls += 1
    per_batch = calls
    results = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(per_batch):
            fn()
        results.append((time.perf_counter() - t0) / per_batch * 1e6)
    return statistics.median(results)


def synthetic_table(rows: int, seed: int = 1) -> tuple[str, tuple[str, int], tuple[str, int]]:
    """A /proc/net/tcp text with ``rows`` sockets; returns it with one client's (peer, local)."""
    rng = random.Random(seed)
    lines = ["  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"]
    target = rng.randrange(rows)
    peer = local = ("127.0.0.1", 0)
    for i in range(rows):
        a = (f"127.0.0.{rng.randrange(1, 255)}", rng.randrange(1024, 65536))
        b = ("127.0.0.1", rng.choice((8080, 443, 5432, 6379)))
        if i == target:
            peer, local = a, b
        enc = [f"{same_user._encode_address(h, False)}:{p:04X}" for h, p in (a, b)]
        uid = rng.choice((0, 1000, 1001, 65534))
        lines.append(f"{i:4d}: {enc[0]} {enc[1]} 01 00000000:00000000 00:00000000 00000000 {uid:>5} "
                     f"       0 {100000 + i} 1 0000000000000000 20 4 30 10 -1\n")
    return "".join(lines), peer, local


def lookup(sockets: int = 1000) -> dict[str, Any]:
    out: dict[str, Any] = {"part": "lookup", "rows": sockets}
    text, peer, local = synthetic_table(sockets)
    out["synthetic_table_kib"] = round(len(text) / 1024, 1)
    out["pure_owner_uid_us"] = round(_per_call_us(lambda: owner_uid(peer, [text], local)), 1)
    out["pure_parse_whole_table_us"] = round(_per_call_us(lambda: parse_proc_net_tcp(text)), 1)
    if not sys.platform.startswith("linux"):
        print(json.dumps(out), flush=True)
        return out
    pairs = []
    with socket.create_server(("127.0.0.1", 0), backlog=sockets) as server:
        try:
            for _ in range(sockets // 2):  # each connection is two rows: the client's and the accepted
                client = socket.create_connection(server.getsockname())
                conn, _ = server.accept()
                pairs.append((client, conn))
            client, conn = pairs[len(pairs) // 2]
            p, lo = same_user.endpoint(conn.getpeername()), same_user.endpoint(conn.getsockname())
            assert p is not None and lo is not None
            rows = sum(Path(t).read_text().count("\n") - 1 for t in same_user.PROC_TABLES if Path(t).exists())
            out["proc_rows_now"] = rows

            def read_tables() -> None:
                for t in same_user.PROC_TABLES:
                    Path(t).read_bytes()

            out["proc_read_tcp_and_tcp6_us"] = round(_per_call_us(read_tables), 1)
            out["proc_lookup_us"] = round(_per_call_us(lambda: same_user.proc_owner(p, lo)), 1)
            try:
                out["sock_diag_lookup_us"] = round(_per_call_us(lambda: same_user.diag_owner(p, lo)), 1)
            except OSError as e:
                out["sock_diag_lookup_us"] = f"unavailable: {e}"
            gate = Gate()
            assert gate.admit(conn.getpeername(), conn.getsockname(), "benchmark")
            out["gate_admit_us"] = round(_per_call_us(lambda: gate.admit(conn.getpeername(), conn.getsockname(),
                                                                          "benchmark")), 1)
            out["gate_method"] = gate.method.name
            out.update(_hook_us(conn))
        finally:
            for a, b in pairs:
                a.close()
                b.close()
    print(json.dumps(out), flush=True)
    return out


def _hook_us(conn: socket.socket) -> dict[str, float]:
    """µs per ``client_connected`` as the proxy runs it (the pipeline's dispatch, the SameUser
    component, the lookup) with the check on and off, for one live connection's addresses."""
    import asyncio

    from mitmproxy.proxy import server_hooks  # noqa: F401 - registers client_connected with the hook list
    from mitmproxy.test import tflow

    from addons.pipeline import Pipeline
    from addons.same_user import AllowUid, SameUser

    client = tflow.tclient_conn()
    client.peername, client.sockname = conn.getpeername(), conn.getsockname()
    out = {}
    for name, allow in (("hook_check_on_us", AllowUid()), ("hook_check_off_us", AllowUid(any_uid=True))):
        pipeline: Any = Pipeline([SameUser(gate=Gate(allow))])
        loop = asyncio.new_event_loop()

        def hook(pipeline: Any = pipeline, loop: asyncio.AbstractEventLoop = loop) -> None:
            loop.run_until_complete(pipeline.client_connected(client))

        try:
            out[name] = round(_per_call_us(hook), 1)
        finally:
            loop.close()
        assert client.error is None
    return out


def _tunnel_once(port: int, host: str, ctx: ssl.SSLContext) -> int:
    """A fresh client connection through a CONNECT tunnel the proxy does not look into."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(4096)
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return int(data.split(b" ", 2)[1])


def newconn(n: int = 300, rounds: int = 5) -> dict[str, Any]:
    from benchmarks import procs
    from benchmarks.levers import _connect_once
    from benchmarks.session import OTHER_HOST

    print(json.dumps({"part": "newconn-same-user", "uptime_at_start": _uptime(),
                      "cpus": os.cpu_count()}), flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gap-same-user-") as tmp:
        work = Path(tmp)
        fake = procs.start_fake(work)
        proxies: dict[str, procs.Proc] = {}
        try:
            proxies["check"] = procs.start_gap(fake, work / "on", "gap-check")
            # -O as `serve` re-executes itself; the module makes sock_diag fail, then runs the CLI.
            proxies["check-proc"] = procs.start_gap(fake, work / "proc", "gap-check-proc", python_flags=("-O",),
                                                    module=("benchmarks.same_user", PROC_FALLBACK))
            proxies["no-check"] = procs.start_gap(fake, work / "off", "gap-nocheck", "--allow-uid", "any")
            names = list(proxies)
            for rnd in range(rounds):
                for name in names[rnd % 3:] + names[:rnd % 3]:
                    proxy = proxies[name]
                    for kind in ("intercepted", "tunnel"):
                        if kind == "intercepted":
                            ctx = ssl.create_default_context(cafile=proxy.info["ca"])
                            ctx.set_alpn_protocols(["http/1.1"])

                            def once(proxy: procs.Proc = proxy, ctx: ssl.SSLContext = ctx) -> int:
                                return _connect_once(proxy.port, ctx, None)[0]
                        else:
                            ctx = ssl.create_default_context(cafile=fake.info["other_ca_pem"])
                            ctx.set_alpn_protocols(["http/1.1"])

                            def once(proxy: procs.Proc = proxy, ctx: ssl.SSLContext = ctx) -> int:
                                return _tunnel_once(proxy.port, OTHER_HOST, ctx)
                        once()  # warm: leaf certificate, token, connections to the fake
                        c0 = proxy.cpu_seconds()
                        t0 = time.perf_counter()
                        for _ in range(n):
                            status = once()
                            assert status == 200, (name, kind, status)
                        wall = time.perf_counter() - t0
                        row = {"part": "newconn-same-user", "round": rnd, "proxy": name, "kind": kind,
                               "connections": n,
                               "proxy_cpu_ms_per_conn": round((proxy.cpu_seconds() - c0) / n * 1000, 3),
                               "wall_ms_per_conn": round(wall / n * 1000, 3)}
                        print(json.dumps(row), flush=True)
                        rows.append(row)
        finally:
            for p in proxies.values():
                p.stop()
            fake.stop()
    summary: dict[str, Any] = {"part": "newconn-same-user-medians", "rounds": rounds, "connections": n,
                               "uptime_at_end": _uptime()}
    for kind in ("intercepted", "tunnel"):
        cpu = {(r["round"], r["proxy"]): r["proxy_cpu_ms_per_conn"] for r in rows if r["kind"] == kind}
        for name in ("check", "check-proc", "no-check"):
            summary[f"{kind}_{name}_cpu_ms"] = round(statistics.median(
                cpu[rnd, name] for rnd in range(rounds)), 3)
        for name in ("check", "check-proc"):
            summary[f"{kind}_{name}/no-check_cpu_paired"] = round(statistics.median(
                cpu[rnd, name] / cpu[rnd, "no-check"] for rnd in range(rounds)), 3)
    print(json.dumps(summary), flush=True)
    return summary


PROC_FALLBACK = "serve-with-proc-fallback"


def _serve_with_proc_fallback(argv: list[str]) -> int:
    """``serve`` in this process with sock_diag failing, so the gate falls back to /proc."""
    from proxy import cli

    def no_sock_diag(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
        raise OSError("sock_diag turned off for the benchmark")

    same_user.diag_owner = no_sock_diag  # before detect() runs: the proxy then proves /proc
    return cli.main(argv)


def main(argv: list[str]) -> int:
    if argv and argv[0] == PROC_FALLBACK:
        return _serve_with_proc_fallback(argv[1:])
    if not argv:
        lookup()
        newconn()
    elif argv[0] == "lookup":
        lookup(int(argv[1]) if len(argv) > 1 else 1000)
    elif argv[0] == "newconn":
        newconn(int(argv[1]) if len(argv) > 1 else 300, int(argv[2]) if len(argv) > 2 else 5)
    else:
        print(f"unknown part {argv[0]!r}: lookup or newconn", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
