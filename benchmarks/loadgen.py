"""Load generator: asyncio HTTP/1.1 keep-alive clients over TLS, direct or through a CONNECT proxy.

Runs in its own process (``python -m benchmarks.loadgen < SPEC_JSON``) so its CPU never mixes
with the proxy's; prints ``START`` when the measured phase begins (after warmup), then one JSON line with counts,
elapsed time and latency percentiles.
Hand-written on asyncio streams because wrk and h2load cannot speak through a CONNECT proxy.
"""

from __future__ import annotations

import asyncio
import json
import resource
import ssl
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

CHUNK = 256 * 1024


@dataclass
class Spec:
    """One load run. ``connect`` is where TCP goes: the origin itself, or a proxy when ``via_proxy``."""

    connect: tuple[str, int]
    host: str  # SNI, Host header and CONNECT authority
    ca: str  # CA bundle the client trusts (the origin's CA, or the proxy's CA)
    via_proxy: bool = False
    method: str = "GET"
    path: str = "/"
    concurrency: int = 1
    duration: float = 2.0  # seconds of measured load (after warmup) ...
    requests: int = 0  # ... or, when > 0, this many requests in total instead
    warmup: float = 0.3
    new_connection: bool = False  # a fresh TCP+TLS connection per request (new-connection cost)
    body_size: int = 0  # request body bytes (uploads); streamed from one reused buffer
    headers: list[str] = field(default_factory=list)  # extra "Name: value" lines (direct: Authorization)


@dataclass
class Result:
    requests: int = 0
    all_requests: int = 0  # including warmup: the proxy's CPU delta covers those too
    reconnects: int = 0  # kept-alive connections the server closed (not errors)
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    first_error: str = ""


def client_context(ca: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def open_stream(spec: Spec, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TCP (+ CONNECT) + TLS to ``spec.host``; the origin name is verified either way."""
    host, port = spec.connect
    if not spec.via_proxy:
        return await asyncio.open_connection(host, port, ssl=ctx, server_hostname=spec.host,
                                             limit=CHUNK * 4, ssl_handshake_timeout=30)
    reader, writer = await asyncio.open_connection(host, port, limit=CHUNK * 4)
    writer.write(f"CONNECT {spec.host}:443 HTTP/1.1\r\nHost: {spec.host}:443\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        writer.close()
        raise ConnectionError(f"CONNECT refused: {head.splitlines()[0].decode(errors='replace')}")
    await writer.start_tls(ctx, server_hostname=spec.host, ssl_handshake_timeout=30)
    return reader, writer


class ServerClosed(Exception):
    """The server closed a kept-alive connection before answering (hypercorn does so every 1,000
    requests); like browsers, reconnect and resend the idempotent request instead of failing it."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """Read one response; returns (status, body bytes, connection closes). Bodies are counted, not kept."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise ServerClosed() from None
        raise
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = -1
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        return status, await _read_chunked(reader), close
    remaining = max(length, 0)
    while remaining:
        data = await reader.read(min(remaining, CHUNK))
        if not data:
            raise ConnectionError("connection closed mid-body")
        remaining -= len(data)
    return status, max(length, 0), close


async def _read_chunked(reader: asyncio.StreamReader) -> int:
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected
            return total
        while size:
            data = await reader.read(min(size, CHUNK))
            if not data:
                raise ConnectionError("connection closed mid-chunk")
            size -= len(data)
            total += len(data)
        await reader.readexactly(2)


def request_head(spec: Spec) -> bytes:
    lines = [f"{spec.method} {spec.path} HTTP/1.1", f"Host: {spec.host}", "User-Agent: gap-bench/1",
             "Accept: */*", *spec.headers]
    if spec.body_size:
        lines += [f"Content-Length: {spec.body_size}", "Content-Type: application/octet-stream"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_body(writer: asyncio.StreamWriter, size: int) -> None:
    block = bytes(range(256)) * (CHUNK // 256)
    while size > 0:
        n = min(size, len(block))
        writer.write(block if n == len(block) else block[:n])
        await writer.drain()
        size -= n


class Runner:
    """Drives ``concurrency`` connections until the deadline or the request budget runs out."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.ctx = client_context(spec.ca)
        self.head = request_head(spec)
        self.result = Result()
        self.measuring = False
        self.stop_at = float("inf")
        self.budget = spec.requests

    def _take(self) -> bool:
        if time.perf_counter() >= self.stop_at:
            return False
        if self.spec.requests:
            if self.budget <= 0:
                return False
            self.budget -= 1
        return True

    async def one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request/response; returns whether the connection can be reused."""
        t0 = time.perf_counter()
        writer.write(self.head)
        if self.spec.body_size:
            await send_body(writer, self.spec.body_size)
        status, n, close = await read_response(reader)
        dt = time.perf_counter() - t0
        self.result.all_requests += 1
        if self.measuring:
            r = self.result
            r.requests += 1
            r.bytes_in += n
            r.bytes_out += self.spec.body_size
            r.latencies.append(dt)
            key = str(status)
            r.statuses[key] = r.statuses.get(key, 0) + 1
            if status >= 400:
                r.errors += 1
        return not close

    async def worker(self) -> None:
        writer: asyncio.StreamWriter | None = None
        reader: asyncio.StreamReader | None = None
        try:
            while self._take():
                try:
                    if writer is None or self.spec.new_connection:
                        t0 = time.perf_counter()
                        reader, writer = await open_stream(self.spec, self.ctx)
                        if self.spec.new_connection:
                            await self.one(reader, writer)
                            if self.measuring:  # count the connection setup in the latency
                                self.result.latencies[-1] = time.perf_counter() - t0
                            writer.close()
                            writer = None
                            continue
                    assert reader is not None
                    if not await self.one(reader, writer):
                        writer.close()
                        writer = None
                except ServerClosed:
                    if self.spec.requests:
                        self.budget += 1  # resend it on a new connection
                    self.result.reconnects += 1
                    if writer is not None:
                        writer.close()
                    writer = None
                except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as e:
                    if self.measuring:
                        self.result.errors += 1
                        self.result.first_error = self.result.first_error or f"{type(e).__name__}: {e}"
                    if writer is not None:
                        writer.close()
                    writer = None
                    await asyncio.sleep(0.01)  # don't spin on a dead proxy
        finally:
            if writer is not None:
                writer.close()

    async def run(self) -> Result:
        workers = [asyncio.create_task(self.worker()) for _ in range(self.spec.concurrency)]
        if self.spec.warmup > 0 and not self.spec.requests:
            await asyncio.sleep(self.spec.warmup)
        self.measuring = True
        print("START", flush=True)  # the parent reads the proxy's CPU time now: warmup and handshakes excluded
        start = time.perf_counter()
        if not self.spec.requests:
            self.stop_at = start + self.spec.duration
        await asyncio.gather(*workers)
        self.result.elapsed = time.perf_counter() - start
        return self.result


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize(result: Result) -> dict[str, Any]:
    lat = sorted(result.latencies)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {k: v for k, v in asdict(result).items() if k != "latencies"}
    out.update(
        rps=result.requests / result.elapsed if result.elapsed else 0.0,
        p50_ms=percentile(lat, 0.50) * 1000,
        p99_ms=percentile(lat, 0.99) * 1000,
        mbps=(result.bytes_in + result.bytes_out) / result.elapsed / 1e6 if result.elapsed else 0.0,
        client_cpu_s=usage.ru_utime + usage.ru_stime,
    )
    return out


def run_spec(spec: Spec) -> dict[str, Any]:
    return summarize(asyncio.run(Runner(spec).run()))


def main(argv: list[str]) -> int:
    raw = json.loads(sys.stdin.read())  # stdin, not argv: the direct client's token stays out of ps
    raw["connect"] = tuple(raw["connect"])
    result = run_spec(Spec(**raw))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
