"""One benchmark session: start the processes, run alternating rounds, collect raw figures."""

from __future__ import annotations

import json
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import procs
from benchmarks.loadgen import Spec

SMALL_PATH = "/storage/v1/b/demo-bucket/o/hello.txt"
GOOGLE_HOST = "storage.googleapis.com"
OTHER_HOST = "www.example.test"

# name -> what it is; the order is the order of the table.
MODES: dict[str, str] = {
    "a": "client -> origin directly",
    "a2": "client -> other origin directly (base for d)",
    "b": "client -> plain mitmdump (-q)",
    "c": "client -> gcp-auth-proxy (injection, audit log)",
    "d": "client -> gcp-auth-proxy, CONNECT tunnel (not intercepted)",
    "cO": "client -> gcp-auth-proxy under python -O",
    "cS": "client -> gcp-auth-proxy, separate addons, mitmproxy's dispatcher (no pipeline)",
}
SEPARATE = ("benchmarks.separate_addons",)


@dataclass
class Config:
    rounds: int = 5
    duration: float = 3.0
    warmup: float = 0.5
    concurrencies: tuple[int, ...] = (1, 8, 32)
    modes: tuple[str, ...] = ("a", "a2", "b", "c", "d")
    large_size: int = 1 << 30
    large_rounds: int = 1
    token_requests: int = 10_000
    token_concurrency: int = 32
    new_conn_duration: float = 3.0
    run_repeats: int = 3
    proxy_python_flags: tuple[str, ...] = ()


@dataclass
class Session:
    config: Config
    workdir: Path
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)
    fake: procs.Proc | None = None
    proxies: dict[str, procs.Proc] = field(default_factory=dict)
    direct_token: str = ""
    results: dict[str, Any] = field(default_factory=dict)

    # --- processes -------------------------------------------------------
    def start(self) -> None:
        self.fake = procs.start_fake(self.workdir)
        self.direct_token = procs.fetch_token(self.fake)
        modes = set(self.config.modes)
        if "b" in modes:
            self.proxies["b"] = procs.start_mitmdump(self.fake, self.workdir)
        if modes & {"c", "d"}:
            self.proxies["c"] = procs.start_gap(self.fake, self.workdir,
                                                python_flags=self.config.proxy_python_flags)
            self.proxies["d"] = self.proxies["c"]
        if "cO" in modes:
            self.proxies["cO"] = procs.start_gap(self.fake, self.workdir, "gcp-auth-proxy-O", python_flags=("-O",))
        if "cS" in modes:
            self.proxies["cS"] = procs.start_gap(self.fake, self.workdir, "gcp-auth-proxy-separate",
                                                python_flags=self.config.proxy_python_flags, module=SEPARATE)

    def stop(self) -> None:
        for p in {id(p): p for p in self.proxies.values()}.values():
            p.stop()
        if self.fake is not None:
            self.fake.stop()

    # --- load ------------------------------------------------------------
    def spec(self, mode: str, **kw: Any) -> Spec:
        assert self.fake is not None
        if "path" in kw:  # a Google path (large objects) for a Google mode
            assert mode not in ("a2", "d"), mode
            path = kw.pop("path")
            spec = self.spec(mode, **kw)
            spec.path = path
            return spec
        if mode in ("a", "a2"):
            other = mode == "a2"
            return Spec(connect=procs.addr(self.fake.info["other" if other else "googleapis"]),
                        host=OTHER_HOST if other else GOOGLE_HOST,
                        ca=self.fake.info["other_ca_pem" if other else "google_ca_pem"],
                        headers=[] if other else [f"Authorization: Bearer {self.direct_token}"],
                        path="/" if other else SMALL_PATH, **kw)
        proxy = self.proxies[mode]
        if mode == "d":
            return Spec(connect=("127.0.0.1", proxy.port), host=OTHER_HOST, ca=self.fake.info["other_ca_pem"],
                        via_proxy=True, path="/", **kw)
        # Plain mitmdump injects nothing: its client brings the token itself, so every mode gets 200s.
        headers = [f"Authorization: Bearer {self.direct_token}"] if mode == "b" else []
        return Spec(connect=("127.0.0.1", proxy.port), host=GOOGLE_HOST, ca=proxy.info["ca"],
                    via_proxy=True, path=SMALL_PATH, headers=headers, **kw)

    def load(self, mode: str, spec: Spec) -> dict[str, Any]:
        """Run one load in a fresh client process; add proxy and origin CPU deltas."""
        assert self.fake is not None
        proxy = self.proxies.get(mode)
        client = subprocess.Popen([sys.executable, "-m", "benchmarks.loadgen"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=procs.ROOT,
                                  env=procs.clean_env())
        assert client.stdin is not None and client.stdout is not None and client.stderr is not None
        client.stdin.write(json.dumps(asdict(spec)))
        client.stdin.close()
        started = client.stdout.readline()  # "START": warmup requests and connection set-up are over
        p0 = proxy.cpu_seconds() if proxy else 0.0
        o0 = self.fake.cpu_seconds()
        last = client.stdout.read()
        p1 = proxy.cpu_seconds() if proxy else 0.0
        o1 = self.fake.cpu_seconds()
        err = client.stderr.read()
        if client.wait() != 0 or started.strip() != "START":
            raise RuntimeError(f"load generator failed: {err.strip()[-2000:]}")
        res: dict[str, Any] = json.loads(last)
        # CPU of the measured phase only (the final JSON line comes right after the last response).
        res["proxy_cpu_s"] = (p1 - p0) if proxy else None
        res["origin_cpu_s"] = o1 - o0
        res["proxy_peak_rss_mb"] = proxy.peak_rss_mb() if proxy else None
        return res

    def small_requests(self) -> None:
        cfg = self.config
        runs: list[dict[str, Any]] = []
        modes = list(cfg.modes)
        for rnd in range(cfg.rounds):
            order = modes[rnd % len(modes):] + modes[:rnd % len(modes)]  # alternate who goes first
            for conc in cfg.concurrencies:
                for mode in order:
                    # warmup counted in CPU: measure CPU on a request budget instead of a deadline.
                    res = self.load(mode, self.spec(mode, concurrency=conc, duration=cfg.duration,
                                                    warmup=cfg.warmup))
                    res.update(mode=mode, concurrency=conc, round=rnd)
                    runs.append(res)
                    self.log(f"round {rnd + 1}/{cfg.rounds} conc {conc:>2} {mode:>2}: {res['rps']:8.0f} req/s "
                             f"p50 {res['p50_ms']:.2f} ms errors {res['errors']}")
        self.results["small_runs"] = runs

    def new_connections(self) -> None:
        """Cost of a fresh TCP+TLS connection per request (CONNECT + two handshakes through a proxy)."""
        cfg = self.config
        runs = []
        modes = [m for m in ("a", "b", "c", "cO", "cS") if m in cfg.modes]
        for rnd in range(cfg.rounds):
            for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:
                res = self.load(mode, self.spec(mode, concurrency=1, duration=cfg.new_conn_duration,
                                                warmup=cfg.warmup, new_connection=True))
                res.update(mode=mode, concurrency=1, round=rnd)
                runs.append(res)
                self.log(f"new connections {mode:>2}: {res['rps']:6.0f} conn/s p50 {res['p50_ms']:.2f} ms")
        self.results["new_conn_runs"] = runs

    def large(self) -> None:
        """1 GiB download and upload through (c) vs (a); proxy RSS growth from VmHWM."""
        cfg = self.config
        size = cfg.large_size
        runs = []
        kinds: dict[str, dict[str, Any]] = {
            "download": {"method": "GET", "path": f"/download/storage/v1/b/bench/o/size-{size}?alt=media"},
            "upload": {"method": "POST", "path": "/upload/storage/v1/b/bench/o?uploadType=media&name=bench-upload",
                       "body_size": size},
        }
        for rnd in range(cfg.large_rounds):
            for kind, kw in kinds.items():
                for mode in (("a", "c") if rnd % 2 == 0 else ("c", "a")):
                    if mode not in self.proxies and mode != "a":
                        continue
                    proxy = self.proxies.get(mode)
                    rss0 = proxy.rss_mb() if proxy else None
                    reset = proxy.reset_peak_rss() if proxy else False
                    spec = self.spec(mode, concurrency=1, requests=1, warmup=0, **kw)
                    res = self.load(mode, spec)
                    moved = res["bytes_in"] if kind == "download" else res["bytes_out"]
                    res.update(kind=kind, mode=mode, round=rnd, size=size,
                               mib_s=moved / res["elapsed"] / (1 << 20) if res["elapsed"] else 0.0,
                               rss_before_mb=rss0,
                               rss_growth_mb=(proxy.peak_rss_mb() - rss0) if proxy and reset and rss0 else None)
                    ok = res["requests"] == 1 and not res["errors"] and moved == size
                    res["ok"] = ok
                    runs.append(res)
                    self.log(f"large {kind} {mode}: {res['mib_s']:.0f} MiB/s ok={ok} "
                             f"rss growth {res['rss_growth_mb']}")
        self.results["large_runs"] = runs

    # --- token work and start-up ------------------------------------------
    def token_work(self) -> None:
        """A fresh proxy: process start -> first proxied 200, then N requests; count token fetches."""
        assert self.fake is not None
        cfg = self.config
        before = procs.fake_stats(self.fake)
        port = procs.free_port()
        argv = procs.gap_argv(self.fake, self.workdir, port, "--audit-log", str(self.workdir / "cold-audit.jsonl"),
                              python_flags=cfg.proxy_python_flags)
        log = (self.workdir / "cold.log").open("wb")
        t0 = time.monotonic()
        popen = subprocess.Popen(argv, env=procs.gap_env(self.fake), cwd=procs.ROOT, stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log)
        cold = procs.Proc("gcp-auth-proxy-cold", popen, self.workdir / "cold.log", port=port,
                          info={"ca": str(self.workdir / "gap-conf" / "mitmproxy-ca-cert.pem")})
        try:
            first = first_proxied_200(cold, t0)
            self.log(f"cold start -> first proxied 200: {first:.3f} s")
            self.proxies["cold"] = cold
            spec = self.spec("c", concurrency=cfg.token_concurrency, requests=cfg.token_requests, warmup=0)
            spec.connect = ("127.0.0.1", port)
            res = self.load("cold", spec)
            after = procs.fake_stats(self.fake)
            fetches = after["token_fetches"] - before["token_fetches"]
            self.log(f"token fetches for {res['requests'] + 1} requests at {cfg.token_concurrency}: {fetches}")
            self.results["token"] = {
                "cold_start_first_200_s": first, "requests": res["requests"] + 1, "errors": res["errors"],
                "concurrency": cfg.token_concurrency, "token_fetches": fetches, "rps": res["rps"],
                "statuses": res["statuses"],
            }
        finally:
            self.proxies.pop("cold", None)
            cold.stop()
            log.close()

    def run_true(self) -> None:
        """``gcp-auth-proxy run -- true`` wall time (median), skipped when ``run`` does not exist yet."""
        assert self.fake is not None
        times = []
        for _ in range(self.config.run_repeats):
            argv = procs.gap_argv(self.fake, self.workdir, 0, command="run",
                                  python_flags=self.config.proxy_python_flags) + ["--", "true"]
            t0 = time.monotonic()
            out = subprocess.run(argv, env=procs.gap_env(self.fake), cwd=procs.ROOT, capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL, check=False, timeout=120)
            wall = time.monotonic() - t0
            if out.returncode != 0:
                note = (out.stderr.strip().splitlines() or ["no output"])[-1]
                if "invalid choice" in out.stderr:
                    note = "skipped: `run` is not implemented in this tree yet"
                self.results["run_true"] = {"skipped": True, "note": note[:300], "exit": out.returncode}
                self.log(f"run -- true: {note}")
                return
            times.append(wall)
        self.results["run_true"] = {"skipped": False, "wall_s": statistics.median(times), "all_s": times}
        self.log(f"run -- true: {statistics.median(times):.3f} s")

    def finish(self) -> None:
        peaks = {}
        for mode, p in self.proxies.items():
            if p.popen.poll() is None:
                peaks[mode] = p.peak_rss_mb()
        self.results["proxy_peak_rss_mb"] = peaks


def probe(port: int, ca: str, path: str = SMALL_PATH) -> int:
    """One GET through the proxy on a fresh connection; returns the status (or raises OSError)."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(f"CONNECT {GOOGLE_HOST}:443 HTTP/1.1\r\nHost: {GOOGLE_HOST}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            if not chunk:
                raise ConnectionError("closed during CONNECT")
            head += chunk
        with ctx.wrap_socket(raw, server_hostname=GOOGLE_HOST) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {GOOGLE_HOST}\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(4096)
            return int(data.split(b" ", 2)[1])


def first_proxied_200(proc: procs.Proc, t0: float, timeout: float = 60.0) -> float:
    """Seconds from ``t0`` (just before the process started) to the first 200 through it."""
    while time.monotonic() - t0 < timeout:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proc.popen.returncode}; see {proc.log}")
        try:
            if probe(proc.port, proc.info["ca"]) == 200:
                return time.monotonic() - t0
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.005)  # polling the port is the measurement itself; 5 ms resolution
    raise RuntimeError(f"no 200 through the proxy within {timeout:.0f} s; see {proc.log}")
