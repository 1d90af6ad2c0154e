"""Streaming figures: the delay the proxy adds to each server-sent event, and memory for a large download after a 401.

``python -m benchmarks.streaming [--events N] [--rounds N] [--size BYTES]`` starts the fake Google and
gcp-auth-proxy (audit log on) as processes on loopback and prints:

- per-event latency of ``streamGenerateContent?alt=sse``: arrival at the client minus the fake's
  send time (same clock), directly and through the proxy, HTTP/1.1 and HTTP/2; the median per mode
  and the proxy's added median;
- a download of ``--size`` bytes (default 1 GiB) right after the token was revoked: the client gets
  the 401 (the replayed answer is too large to hold), retries, and streams the object; the proxy's
  peak RSS growth (VmHWM, reset first) and the throughput.

Figures only, no targets asserted. Nothing is written but the processes' logs in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx

from benchmarks import procs

HOST = "us-central1-aiplatform.googleapis.com"
SSE_PATH = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini:streamGenerateContent?alt=sse"


def _latencies(client: httpx.Client, url: str, events: int, interval_ms: int, **kwargs: object) -> list[float]:
    """Per-event delay (s) between the fake sending an event and this client having it."""
    out: list[float] = []
    with client.stream("POST", f"{url}&events={events}&interval_ms={interval_ms}", json={}, **kwargs) as r:  # type: ignore[arg-type]
        r.raise_for_status()
        buffer = b""
        for chunk in r.iter_raw():
            now = time.time()
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                line, buffer = buffer.split(b"\r\n\r\n", 1)
                if line.startswith(b"data: "):
                    out.append(now - json.loads(line[6:])["fake"]["sent_at"])
    if len(out) != events:
        raise RuntimeError(f"expected {events} events, got {len(out)}")
    return out


def sse_latency(fake: procs.Proc, gap: procs.Proc, events: int, rounds: int, interval_ms: int) -> dict[str, list[float]]:
    token = procs.fetch_token(fake)  # a fake token for the direct client; never printed
    host, port = procs.addr(fake.info["googleapis"])
    results: dict[str, list[float]] = {}
    modes = [("direct", False), ("direct", True), ("proxy", False), ("proxy", True)]
    for _ in range(rounds):  # alternate the modes, round after round
        for where, http2 in modes:
            name = f"{where} {'HTTP/2' if http2 else 'HTTP/1.1'}"
            if where == "direct":
                with httpx.Client(verify=fake.info["google_ca_pem"], http2=http2, trust_env=False, timeout=60) as c:
                    lat = _latencies(c, f"https://{host}:{port}{SSE_PATH}", events, interval_ms,
                                     headers={"host": HOST, "authorization": f"Bearer {token}"},
                                     extensions={"sni_hostname": HOST})
            else:
                with httpx.Client(proxy=f"http://127.0.0.1:{gap.port}", verify=gap.info["ca"], http2=http2,
                                  trust_env=False, timeout=60) as c:
                    lat = _latencies(c, f"https://{HOST}{SSE_PATH}", events, interval_ms)
            results.setdefault(name, []).extend(lat)
    return results


def download_after_401(fake: procs.Proc, gap: procs.Proc, size: int) -> dict[str, float | int | bool]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    opener.open(urllib.request.Request(f"{fake.info['admin_url']}/revoke_all", method="POST"), timeout=10).read()
    url = f"https://storage.googleapis.com/download/storage/v1/b/bench/o/size-{size}?alt=media"
    reset = gap.reset_peak_rss()
    before = gap.rss_mb()
    with httpx.Client(proxy=f"http://127.0.0.1:{gap.port}", verify=gap.info["ca"], trust_env=False,
                      timeout=120) as c:
        first = c.get(url)
        started = time.monotonic()
        received = 0
        with c.stream("GET", url) as r:
            status = r.status_code
            for chunk in r.iter_raw(1 << 20):
                received += len(chunk)
        seconds = time.monotonic() - started
    return {"first_status": first.status_code, "status": status, "bytes": received, "seconds": seconds,
            "mib_s": received / seconds / (1 << 20), "rss_before_mb": before,
            "peak_growth_mb": gap.peak_rss_mb() - before, "peak_reset": reset}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20, help="events per stream (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="streams per mode (default 3)")
    parser.add_argument("--interval-ms", type=int, default=100, help="time between events (default 100)")
    parser.add_argument("--size", type=int, default=1 << 30, help="download size in bytes (default 1 GiB)")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-streaming-") as tmp:
        workdir = Path(tmp)
        fake = procs.start_fake(workdir)
        gap = None
        try:
            gap = procs.start_gap(fake, workdir)
            procs.wait_listening(gap, gap.port)
            latency = sse_latency(fake, gap, args.events, args.rounds, args.interval_ms)
            download = download_after_401(fake, gap, args.size)
        finally:
            if gap is not None:
                gap.stop()
            fake.stop()
    print(f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs")
    print(f"\nServer-sent events: {args.rounds} streams x {args.events} events, {args.interval_ms} ms apart, per mode")
    print("| mode | events | median ms | p90 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in latency.items():
        ms = sorted(v * 1000 for v in values)
        print(f"| {name} | {len(ms)} | {statistics.median(ms):.2f} | {ms[int(len(ms) * 0.9)]:.2f} | {ms[-1]:.2f} |")
    for version in ("HTTP/1.1", "HTTP/2"):
        added = statistics.median(latency[f"proxy {version}"]) - statistics.median(latency[f"direct {version}"])
        print(f"added by the proxy, median, {version}: {added * 1000:.2f} ms per event")
    print(f"\nDownload of {args.size:,} B after a 401 (token revoked first)")
    print(f"first answer {download['first_status']} (replayed answer too large to hold), retry {download['status']}, "
          f"{download['bytes']:,} B in {download['seconds']:.1f} s = {download['mib_s']:.0f} MiB/s")
    print(f"proxy RSS before {download['rss_before_mb']:.1f} MB, peak growth {download['peak_growth_mb']:.1f} MB"
          + ("" if download["peak_reset"] else " (VmHWM could not be reset: growth over the whole run)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
