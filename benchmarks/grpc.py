"""gRPC figures: unary calls per second direct vs through the proxy, and time to the first streamed message.

``python -m benchmarks.grpc [--rounds N] [--duration S] [--quick]`` starts the fake Google (its
grpcio Pub/Sub server, fakegoogle/pubsub_server.py) and gcp-auth-proxy (audit log on) as processes
on loopback, and drives them from this process with grpcio's asyncio client:

- unary calls/s (``fakegoogle.testing.v1.Echo/Unary``, 32-byte messages) on **one channel** with
  1 and 8 concurrent calls (HTTP/2 streams), directly (the client brings a token) and through the
  proxy (it injects one), alternating rounds, medians; latency p50/p99; CPU of the proxy and of
  the fake per 1,000 calls;
- time to the first message of a server-streaming call (the server sends one, then holds the
  stream open until the client cancels): on a warm channel, and on a new channel each time (TCP,
  CONNECT and TLS included).

Figures only, no targets asserted; the load generator, the fake and the proxy share the machine.
Nothing is written but the processes' logs in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc

from benchmarks import procs

HOST = "pubsub.googleapis.com"
UNARY = "/fakegoogle.testing.v1.Echo/Unary"
STREAM = "/fakegoogle.testing.v1.Echo/ServerStream"
PAYLOAD = b"x" * 32
CALL_TIMEOUT = 30.0


# -- the fake, as its own process ------------------------------------------------------------------

def serve_fake(workdir: Path) -> int:
    """``python -m benchmarks.grpc --serve-fake DIR``: the fake Google plus its gRPC address, one JSON line."""
    from fakegoogle import FakeGoogle
    from fakegoogle.__main__ import describe, hostport

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with FakeGoogle(workdir) as fake:
        key = fake.write_service_account_key(workdir / "service_account.json")
        user = fake.write_authorized_user(workdir / "authorized_user.json")
        print(json.dumps({**describe(fake, key, user), "pubsub": hostport(fake.pubsub_addr)}), flush=True)
        done.wait()
    return 0


def start_fake(workdir: Path) -> procs.Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "fake.log"
    popen = subprocess.Popen([sys.executable, "-m", "benchmarks.grpc", "--serve-fake", str(workdir / "fake")],
                             env=procs.clean_env(), cwd=procs.ROOT, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=log.open("wb"))
    proc = procs.Proc("fakegoogle", popen, log)
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line:
        raise RuntimeError(f"the fake Google did not start; see {log}")
    proc.info = json.loads(line)
    return proc


# -- the client ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """How a client reaches pubsub.googleapis.com: straight to the fake, or through the proxy."""

    name: str
    address: str
    credentials: grpc.ChannelCredentials
    options: tuple[tuple[str, Any], ...]
    metadata: tuple[tuple[str, str], ...]

    def channel(self) -> grpc.aio.Channel:
        # Its own connection, never one grpcio shares between channels of the same target.
        return grpc.aio.secure_channel(self.address, self.credentials,
                                       options=[*self.options, ("grpc.use_local_subchannel_pool", 1)])


def direct_target(fake: procs.Proc, token: str) -> Target:
    return Target("direct", fake.info["pubsub"],
                  grpc.ssl_channel_credentials(Path(fake.info["google_ca_pem"]).read_bytes()),
                  (("grpc.ssl_target_name_override", HOST),), (("authorization", f"Bearer {token}"),))


def proxy_target(gap: procs.Proc) -> Target:
    return Target("proxy", f"{HOST}:443", grpc.ssl_channel_credentials(Path(gap.info["ca"]).read_bytes()),
                  (("grpc.http_proxy", f"http://127.0.0.1:{gap.port}"),), ())


async def _unary_load(target: Target, streams: int, seconds: float, warmup: float,
                      measure: list[procs.Proc]) -> dict[str, float]:
    """``streams`` concurrent callers on one channel for ``seconds`` (after ``warmup``)."""
    async with target.channel() as channel:
        call = channel.unary_unary(UNARY)
        await call(PAYLOAD, metadata=target.metadata, timeout=CALL_TIMEOUT)  # connect (and a token)
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        phase = {"record": False, "stop": False}

        async def caller() -> None:
            while not phase["stop"]:
                began = time.perf_counter()
                await call(PAYLOAD, metadata=target.metadata, timeout=CALL_TIMEOUT)
                if phase["record"]:
                    latencies.append(time.perf_counter() - began)

        workers = [asyncio.create_task(caller()) for _ in range(streams)]
        await asyncio.sleep(warmup)  # a load phase, not synchronisation
        cpu = [p.cpu_seconds() for p in measure]
        phase["record"] = True
        began = loop.time()
        await asyncio.sleep(seconds)
        phase["record"] = False
        elapsed = loop.time() - began
        used = [p.cpu_seconds() - c for p, c in zip(measure, cpu)]
        phase["stop"] = True
        await asyncio.gather(*workers)
    latencies.sort()
    calls = len(latencies)
    return {
        "calls_per_s": calls / elapsed,
        "p50_ms": latencies[calls // 2] * 1000,
        "p99_ms": latencies[min(calls - 1, int(calls * 0.99))] * 1000,
        **{f"{p.name}_cpu_s_per_1k": used[i] / calls * 1000 for i, p in enumerate(measure)},
    }


async def _first_message(target: Target, calls: int, cold: bool) -> list[float]:
    """Seconds from starting a server-streaming call to holding its first message."""
    out: list[float] = []
    warm = None if cold else target.channel()
    try:
        if warm is not None:
            await warm.unary_unary(UNARY)(PAYLOAD, metadata=target.metadata, timeout=CALL_TIMEOUT)
        for _ in range(calls):
            channel = target.channel() if cold else warm
            assert channel is not None
            try:
                began = time.perf_counter()
                # x-gate: the server sends one message, then waits (until this call is cancelled).
                call = channel.unary_stream(STREAM)(b"2", metadata=(*target.metadata, ("x-gate", "never")),
                                                    timeout=CALL_TIMEOUT)
                first = await call.read()
                out.append(time.perf_counter() - began)
                if first != b"message 0":
                    raise RuntimeError(f"unexpected first message {first!r}")
                call.cancel()
            finally:
                if cold:
                    await channel.close()
    finally:
        if warm is not None:
            await warm.close()
    return out


# -- the session -----------------------------------------------------------------------------------

def run(rounds: int, seconds: float, warmup: float, first_calls: int, cold_calls: int,
        workdir: Path) -> dict[str, Any]:
    fake = start_fake(workdir)
    gap = None
    try:
        gap = procs.start_gap(fake, workdir, "gcp-auth-proxy", "--resolve", f"{HOST}={fake.info['pubsub']}")
        targets = [direct_target(fake, procs.fetch_token(fake)), proxy_target(gap)]
        unary: dict[str, list[dict[str, float]]] = {}
        for _ in range(rounds):  # alternate the modes, round after round
            for streams in (1, 8):
                for target in targets:
                    measure = [gap, fake] if target.name == "proxy" else [fake]
                    unary.setdefault(f"{target.name} {streams}", []).append(
                        asyncio.run(_unary_load(target, streams, seconds, warmup, measure)))
        first: dict[str, list[float]] = {}
        for target in targets:
            first[f"{target.name} warm"] = asyncio.run(_first_message(target, first_calls, cold=False))
            first[f"{target.name} cold"] = asyncio.run(_first_message(target, cold_calls, cold=True))
        return {"unary": unary, "first": first, "proxy_rss_mb": gap.peak_rss_mb()}
    finally:
        if gap is not None:
            gap.stop()
        fake.stop()


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(results: dict[str, Any], load: str, rounds: int, seconds: float) -> str:
    unary = results["unary"]
    lines = [
        (f"Machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, grpcio "
         f"{metadata.version('grpcio')}, mitmproxy {metadata.version('mitmproxy')}; load average at start {load}. "
         "Client, fake and proxy on the same box (loopback)."),
        (f"Command: `python -m benchmarks.grpc` — {rounds} alternating rounds of {seconds:g} s (medians), "
         f"unary `{UNARY}` with {len(PAYLOAD)}-byte messages, one channel."),
        "",
        "| mode | concurrent streams | calls/s | p50 ms | p99 ms | proxy CPU s / 1k calls | fake CPU s / 1k calls |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for streams in (1, 8):
        for name in ("direct", "proxy"):
            runs = unary[f"{name} {streams}"]
            proxy_cpu = f"{_median(runs, 'gcp-auth-proxy_cpu_s_per_1k'):.3f}" if name == "proxy" else "–"
            lines.append(f"| {name} | {streams} | {_median(runs, 'calls_per_s'):,.0f} | {_median(runs, 'p50_ms'):.2f} "
                         f"| {_median(runs, 'p99_ms'):.2f} | {proxy_cpu} | {_median(runs, 'fakegoogle_cpu_s_per_1k'):.3f} |")
    ratios = " | ".join(f"{_median(unary[f'proxy {s}'], 'calls_per_s') / _median(unary[f'direct {s}'], 'calls_per_s'):.2f}×"
                        for s in (1, 8))
    lines += ["", "| ratio (calls/s) | 1 stream | 8 streams |", "|---|---:|---:|", f"| proxy/direct | {ratios} |", ""]
    first = results["first"]
    lines += ["| time to first streamed message | direct p50 ms | proxy p50 ms | proxy added ms |", "|---|---:|---:|---:|"]
    for kind, what in (("warm", f"warm channel ({len(first['direct warm'])} calls)"),
                       ("cold", f"new channel each call ({len(first['direct cold'])} calls; TCP, CONNECT, TLS)")):
        d, p = (statistics.median(first[f"{n} {kind}"]) * 1000 for n in ("direct", "proxy"))
        lines.append(f"| {what} | {d:.2f} | {p:.2f} | {p - d:.2f} |")
    lines += ["", f"Proxy peak RSS (VmHWM) at the end: {results['proxy_rss_mb']:.1f} MB"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.grpc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3)")
    p.add_argument("--quick", action="store_true", help="1 round of 0.5 s, few first-message calls")
    p.add_argument("--workdir", type=Path, help="keep the processes' logs here (default: a temporary folder)")
    p.add_argument("--serve-fake", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_fake:
        return serve_fake(args.serve_fake)
    rounds, seconds, warmup, first_calls, cold_calls = args.rounds, args.duration, 0.5, 50, 15
    if args.quick:
        rounds, seconds, warmup, first_calls, cold_calls = 1, 0.5, 0.1, 5, 3
    load = "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-grpc-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run(rounds, seconds, warmup, first_calls, cold_calls, workdir)
    print(report(results, load, rounds, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
