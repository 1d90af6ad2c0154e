"""Measurements behind docs/benchmarks.md's "levers" section (``python -m benchmarks.levers PART``).

Parts: ``newconn [N [ROUNDS]]`` (cost of a new intercepted connection: CA/leaf key type, TLS
session resumption), ``handshake [N [ROUNDS]]`` (the TLS part of it alone, in-process), ``h2``
(HTTP/2 to the client vs HTTP/1.1 keep-alive), ``workers`` (two proxy processes vs one, the load
split between them). Each prints one JSON object per measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from benchmarks import procs
from benchmarks.session import GOOGLE_HOST, SMALL_PATH, Config, Session


def write_rsa_ca(confdir: Path) -> None:
    """Seed ``confdir`` with the CA gcp-auth-proxy made before it made its own P-256 one: mitmproxy's
    RSA-2048 CA (the proxy keeps an existing CA; mitmproxy gives every leaf the CA's key)."""
    from mitmproxy import certs

    confdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    certs.CertStore.create_store(confdir, "mitmproxy", 2048)


def _connect_once(port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None) -> tuple[int, ssl.SSLSession | None, bool]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.sendall(f"CONNECT {GOOGLE_HOST}:443 HTTP/1.1\r\nHost: {GOOGLE_HOST}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += raw.recv(4096)
        with ctx.wrap_socket(raw, server_hostname=GOOGLE_HOST, session=session) as s:
            s.sendall(f"GET {SMALL_PATH} HTTP/1.1\r\nHost: {GOOGLE_HOST}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return int(data.split(b" ", 2)[1]), s.session, bool(s.session_reused)


def newconn(n: int, rounds: int = 3) -> list[dict[str, Any]]:
    """Fresh connection per request, sequential: RSA-2048 vs ECDSA P-256 proxy CA, with/without resumption.

    The two proxies alternate (the first one rotates each round); a summary line of medians ends it.
    """
    out = []
    print(json.dumps({"part": "newconn", "loadavg_at_start": os.getloadavg()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="gap-levers-") as tmp:
        work = Path(tmp)
        fake = procs.start_fake(work)
        proxies: dict[str, procs.Proc] = {}
        try:
            write_rsa_ca(work / "rsa" / "gap-conf")
            proxies["rsa2048"] = procs.start_gap(fake, work / "rsa", "gap-rsa")
            proxies["ecdsa-p256"] = procs.start_gap(fake, work / "ec", "gap-ec")  # the proxy's own new CA
            for name, proxy in proxies.items():  # what each handshake will use (leaf key = CA key)
                key = x509.load_pem_x509_certificate(Path(proxy.info["ca"]).read_bytes()).public_key()
                assert isinstance(key, rsa.RSAPublicKey if name == "rsa2048" else ec.EllipticCurvePublicKey), name
            names = list(proxies)
            for rnd in range(rounds):
                for name in names[rnd % 2:] + names[:rnd % 2]:
                    proxy = proxies[name]
                    for resume in (False, True):
                        ctx = ssl.create_default_context(cafile=proxy.info["ca"])
                        ctx.set_alpn_protocols(["http/1.1"])
                        session = None
                        _connect_once(proxy.port, ctx, None)  # warm the leaf cache
                        c0, lat, reused = proxy.cpu_seconds(), [], 0
                        for _ in range(n):
                            t0 = time.perf_counter()
                            status, sess, was_reused = _connect_once(proxy.port, ctx, session if resume else None)
                            lat.append(time.perf_counter() - t0)
                            session = sess
                            reused += was_reused
                            assert status == 200, status
                        cpu = proxy.cpu_seconds() - c0
                        row = {"part": "newconn", "round": rnd, "ca": name, "client_resumption": resume,
                               "connections": n, "sessions_reused": reused,
                               "proxy_cpu_ms_per_conn": cpu / n * 1000,
                               "p50_ms": statistics.median(lat) * 1000}
                        print(json.dumps(row), flush=True)
                        out.append(row)
        finally:
            for p in proxies.values():
                p.stop()
            fake.stop()
    summary: dict[str, Any] = {"part": "newconn-medians", "rounds": rounds, "connections": n,
                               "loadavg_at_end": os.getloadavg()}
    for name in ("rsa2048", "ecdsa-p256"):
        for resume in (False, True):
            cells = [r for r in out if r["ca"] == name and r["client_resumption"] == resume]
            key = f"{name}{'-resumed' if resume else ''}"
            summary[f"{key}_cpu_ms"] = round(statistics.median(r["proxy_cpu_ms_per_conn"] for r in cells), 2)
            summary[f"{key}_p50_ms"] = round(statistics.median(r["p50_ms"] for r in cells), 2)
    for resume, suffix in ((False, ""), (True, "-resumed")):
        summary[f"ecdsa/rsa{suffix}_cpu"] = round(summary[f"ecdsa-p256{suffix}_cpu_ms"]
                                                 / summary[f"rsa2048{suffix}_cpu_ms"], 3)
        # paired within each round, so drift in the machine's load between rounds cancels out
        cpu = {(r["round"], r["ca"]): r["proxy_cpu_ms_per_conn"] for r in out if r["client_resumption"] == resume}
        summary[f"ecdsa/rsa{suffix}_cpu_paired"] = round(statistics.median(
            cpu[rnd, "ecdsa-p256"] / cpu[rnd, "rsa2048"] for rnd in range(rounds)), 3)
    print(json.dumps(summary), flush=True)
    return out


async def _h2_load(port: int, ca: str, streams: int, duration: float, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """One HTTP/2 connection through CONNECT, ``streams`` requests in flight at all times."""
    import h2.config
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {GOOGLE_HOST}:443 HTTP/1.1\r\nHost: {GOOGLE_HOST}:443\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["h2"])
    await writer.start_tls(ctx, server_hostname=GOOGLE_HOST)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    req = [(":method", "GET"), (":scheme", "https"), (":authority", GOOGLE_HOST), (":path", SMALL_PATH), *headers]
    started: dict[int, float] = {}
    lat: list[float] = []
    done = 0
    stop_at = time.perf_counter() + duration
    statuses: dict[str, int] = {}

    def send_one() -> None:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, req, end_stream=True)
        started[sid] = time.perf_counter()

    for _ in range(streams):
        send_one()
    writer.write(conn.data_to_send())
    t_start = time.perf_counter()
    while started:
        data = await reader.read(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                st = dict(ev.headers).get(b":status", b"?").decode()
                statuses[st] = statuses.get(st, 0) + 1
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                lat.append(time.perf_counter() - started.pop(ev.stream_id))
                done += 1
                if time.perf_counter() < stop_at:
                    send_one()
        writer.write(conn.data_to_send())
    elapsed = time.perf_counter() - t_start
    writer.close()
    lat.sort()
    return {"requests": done, "rps": done / elapsed, "p50_ms": lat[len(lat) // 2] * 1000, "statuses": statuses}


def h2(duration: float, rounds: int) -> list[dict[str, Any]]:
    """HTTP/2 (one connection, N streams) vs HTTP/1.1 (N keep-alive connections) through gcp-auth-proxy."""
    out = []
    with tempfile.TemporaryDirectory(prefix="gap-levers-") as tmp:
        s = Session(Config(modes=("a", "c")), Path(tmp))
        s.start()
        try:
            proxy = s.proxies["c"]
            for rnd in range(rounds):
                for n in (8, 32):
                    c0 = proxy.cpu_seconds()
                    r = asyncio.run(_h2_load(proxy.port, proxy.info["ca"], n, duration, []))
                    r.update(part="h2", round=rnd, protocol="h2 (1 conn)", concurrency=n,
                             proxy_cpu_ms_per_req=(proxy.cpu_seconds() - c0) / r["requests"] * 1000)
                    print(json.dumps(r), flush=True)
                    out.append(r)
                    h1 = s.load("c", s.spec("c", concurrency=n, duration=duration, warmup=0.2))
                    row = {"part": "h2", "round": rnd, "protocol": "http/1.1", "concurrency": n, "rps": h1["rps"],
                           "p50_ms": h1["p50_ms"], "requests": h1["requests"],
                           "proxy_cpu_ms_per_req": h1["proxy_cpu_s"] / h1["requests"] * 1000}
                    print(json.dumps(row), flush=True)
                    out.append(row)
        finally:
            s.stop()
    return out


def workers(duration: float, rounds: int, conc: int = 32) -> list[dict[str, Any]]:
    """Two proxy processes (load split in half) vs one: the case for ``--workers N``."""
    out = []
    with tempfile.TemporaryDirectory(prefix="gap-levers-") as tmp:
        work = Path(tmp)
        s = Session(Config(modes=("a", "c")), work)
        s.start()
        assert s.fake is not None
        second = procs.start_gap(s.fake, work, "gap-2")
        try:
            for rnd in range(rounds):
                for layout in ("1 process", "2 processes"):
                    targets = [s.proxies["c"], s.proxies["c"]] if layout == "1 process" else [s.proxies["c"], second]
                    cpu0 = [p.cpu_seconds() for p in {id(t): t for t in targets}.values()]
                    specs = []
                    for t in targets:
                        spec = s.spec("c", concurrency=conc // 2, duration=duration, warmup=0.3)
                        spec.connect = ("127.0.0.1", t.port)
                        specs.append(spec)
                    clients = [subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen"], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, text=True, cwd=procs.ROOT, env=procs.clean_env())
                               for _ in specs]
                    for c, spec in zip(clients, specs):
                        assert c.stdin is not None
                        c.stdin.write(json.dumps(asdict(spec)))
                        c.stdin.close()
                    results = [json.loads(c.stdout.read().splitlines()[-1]) for c in clients if c.stdout is not None]
                    for c in clients:
                        c.wait()
                    # CPU over the whole client runs (warmup and handshakes included, same in both layouts)
                    cpu = sum(p.cpu_seconds() for p in {id(t): t for t in targets}.values()) - sum(cpu0)
                    reqs = sum(r["all_requests"] for r in results)
                    row = {"part": "workers", "round": rnd, "layout": layout, "concurrency": conc,
                           "rps": sum(r["rps"] for r in results), "errors": sum(r["errors"] for r in results),
                           "proxy_cpu_ms_per_req": cpu / reqs * 1000}
                    print(json.dumps(row), flush=True)
                    out.append(row)
        finally:
            second.stop()
            s.stop()
    return out


def _server_handshake(store: Any, client_ctx: ssl.SSLContext, session: ssl.SSLSession | None
                      ) -> tuple[float, ssl.SSLSession | None, bool]:
    """One client handshake against a server side set up as mitmproxy's TlsConfig.tls_start_client
    does it, over memory BIOs; returns the CPU seconds spent on the server side only."""
    from mitmproxy.addons import tlsconfig
    from mitmproxy.net import tls as net_tls
    from OpenSSL import SSL

    spent = 0.0
    t = time.thread_time()
    entry = store.get_cert(GOOGLE_HOST, [x509.DNSName(GOOGLE_HOST)])  # cached after the first call
    server_ctx = net_tls.create_client_proxy_context(  # lru_cached: one SSL_CTX, as in the proxy
        method=net_tls.Method.TLS_SERVER_METHOD, min_version=net_tls.DEFAULT_MIN_VERSION,
        max_version=net_tls.DEFAULT_MAX_VERSION, cipher_list=tlsconfig._DEFAULT_CIPHERS, ecdh_curve=None,
        chain_file=entry.chain_file, alpn_select_callback=tlsconfig.alpn_select_callback,
        request_client_cert=False, extra_chain_certs=(), dhparams=store.dhparams)
    server = SSL.Connection(server_ctx, None)
    server.use_certificate(entry.cert.to_cryptography())
    server.use_privatekey(entry.privatekey)
    server.set_app_data(tlsconfig.AppData(client_alpn=b"http/1.1", server_alpn=None, http2=False))
    server.set_accept_state()
    spent += time.thread_time() - t

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_hostname=GOOGLE_HOST, session=session)

    def serve(data: bytes, app_data: bytes = b"") -> None:
        nonlocal spent
        t = time.thread_time()
        server.bio_write(data)
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
            if app_data:
                server.send(app_data)
        with contextlib.suppress(SSL.WantReadError):
            incoming.write(server.bio_read(65536))
        spent += time.thread_time() - t

    while True:
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            serve(outgoing.read())
    serve(outgoing.read(), b"x")  # the client's Finished; TLS 1.3 session tickets follow it
    client.read(1)
    return spent, client.session, client.session_reused


def handshake(n: int, rounds: int) -> dict[str, Any]:
    """Only the TLS part of a new intercepted connection, in-process: RSA-2048 vs P-256, resumed or not."""
    from mitmproxy import certs

    from proxy import trust

    cells: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gap-levers-") as tmp:
        confdirs = {"rsa2048": Path(tmp) / "rsa", "ecdsa-p256": Path(tmp) / "ec"}
        write_rsa_ca(confdirs["rsa2048"])
        trust.ensure_ca(confdirs["ecdsa-p256"])
        for rnd in range(rounds):
            for name, confdir in confdirs.items():
                store = certs.CertStore.from_store(confdir, "mitmproxy", 2048)
                client_ctx = ssl.create_default_context(cafile=str(confdir / "mitmproxy-ca-cert.pem"))
                client_ctx.set_alpn_protocols(["http/1.1"])
                for resume in (False, True):
                    session, total, reused = None, 0.0, 0
                    _server_handshake(store, client_ctx, None)
                    for _ in range(n):
                        spent, new_session, was_reused = _server_handshake(store, client_ctx, session if resume else None)
                        session = new_session
                        total += spent
                        reused += was_reused
                    assert reused >= (n - 1 if resume else 0) and (resume or reused == 0), (name, resume, reused)
                    cells.setdefault(f"{name}{'-resumed' if resume else ''}", []).append(total / n * 1000)
    summary: dict[str, Any] = {"part": "handshake", "rounds": rounds, "handshakes": n}
    summary.update({f"{k}_server_cpu_ms": round(statistics.median(v), 3) for k, v in cells.items()})
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str]) -> int:
    part = argv[0] if argv else "newconn"
    if part == "newconn":
        newconn(int(argv[1]) if len(argv) > 1 else 200, int(argv[2]) if len(argv) > 2 else 3)
    elif part == "handshake":
        handshake(int(argv[1]) if len(argv) > 1 else 300, int(argv[2]) if len(argv) > 2 else 7)
    elif part == "h2":
        h2(float(argv[1]) if len(argv) > 1 else 3.0, 3)
    elif part == "workers":
        workers(float(argv[1]) if len(argv) > 1 else 3.0, 3)
    else:
        print(f"unknown part {part!r}: newconn, handshake, h2 or workers", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
