"""Soak and fault run: sustained concurrent load through the proxy while the token source misbehaves.

    python -m benchmarks.soak [--duration 300] [--concurrency 16] [--token-lifetime 30]

Runs the fake Google and the proxy as separate processes. Tokens live ``--token-lifetime`` seconds,
so the proxy rotates them every lifetime/2 seconds. Timed to the proxy's own token fetches, the run
revokes the current token (the proxy's 401 recovery must hide it) and makes the token endpoint fail
(500, then 429) for a while, starting just before a refresh is due, for less time than the token
stays usable: a valid token exists throughout, so the target is zero failed client requests. Every
answer is checked: the fake echoes whether the request carried a token and whether it was valid.
Proxy RSS is sampled from /proc. The report is one JSON object on stdout (plus a summary on stderr).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from benchmarks.procs import clean_env

ROOT = Path(__file__).resolve().parent.parent
EXPIRY_SKEW = 10.0  # addons/token_cache.py: a token is not served in its last 10 s
START_TIMEOUT = 30.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Tally:
    """What the load threads saw; one lock, small critical sections."""

    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    without_token: int = 0  # answers from the fake saying the request carried no Authorization
    invalid_token: int = 0  # answers saying the token was not valid (should be replaced by the 401 retry)
    failures: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ok: bool, reason: str = "", no_token: bool = False, invalid: bool = False) -> None:
        with self.lock:
            self.sent += 1
            self.succeeded += ok
            self.failed += not ok
            self.without_token += no_token
            self.invalid_token += invalid
            if not ok:
                self.failures[reason] += 1


class Soak:
    def __init__(self, workdir: Path, lifetime: int, log: IO[str]) -> None:
        self.workdir = workdir
        self.lifetime = lifetime
        self.log = log
        self.procs: list[subprocess.Popen[str]] = []

    # -- processes -------------------------------------------------------------------------------------

    def start_fake(self) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fakegoogle", "--workdir", str(self.workdir / "fake"),
             "--token-lifetime", str(self.lifetime)],
            cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        info: dict[str, Any] = json.loads(proc.stdout.readline())
        self.admin = info["admin_url"]
        return info

    def start_proxy(self, fake: dict[str, Any]) -> tuple[subprocess.Popen[str], str, Path]:
        confdir = self.workdir / "confdir"
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--listen", "127.0.0.1:0", "--confdir", str(confdir),
             "--resolve", f"*.googleapis.com={fake['googleapis']}", "--upstream-ca", fake["google_ca_pem"]],
            cwd=ROOT, env=clean_env(GOOGLE_APPLICATION_CREDENTIALS=fake["service_account_key"]),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        url = ""
        ready = False
        while not (url and ready):
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError("the proxy did not start")
            if m := re.search(r"listening on (127\.0\.0\.1:\d+)", line):
                url = f"http://{m.group(1)}"
            ready = ready or "token available" in line
        # Keep draining its output so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
        return proc, url, confdir / "mitmproxy-ca-cert.pem"

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()

    # -- the fake's admin endpoints -------------------------------------------------------------------

    def admin_post(self, action: str) -> None:
        requests.post(f"{self.admin}/{action}", timeout=10).raise_for_status()

    def stats(self) -> dict[str, int]:
        r = requests.get(f"{self.admin}/stats", timeout=10)
        r.raise_for_status()
        return r.json()  # type: ignore[no-any-return]

    def wait_for_fetch(self, stop_at: float) -> float | None:
        """Block until the proxy fetches a new token; returns when (monotonic), None past stop_at."""
        start = self.stats()["token_fetches"]
        while time.monotonic() < stop_at:
            if self.stats()["token_fetches"] > start:
                return time.monotonic()
            time.sleep(0.1)
        return None


def load_worker(url: str, ca: Path, tally: Tally, stop: threading.Event) -> None:
    s = requests.Session()
    s.trust_env = False
    s.proxies = {"https": url}
    s.verify = str(ca)
    # Alternate an API call that checks the token (a revoked one gets 401, which the proxy must
    # hide by retrying with a fresh token) with /echo, which reports whether a token came along.
    urls = ["https://storage.googleapis.com/storage/v1/b/demo-bucket/o/hello.txt?alt=media",
            "https://storage.googleapis.com/echo"]
    n = 0
    while not stop.is_set():
        target = urls[n % 2]
        n += 1
        try:
            r = s.get(target, timeout=30)
        except requests.RequestException as e:
            tally.record(False, f"exception:{type(e).__name__}")
            continue
        if r.status_code != 200:
            try:
                reason = r.json()["error"]["errors"][0]["reason"]
            except (ValueError, KeyError, IndexError, TypeError):
                reason = ""
            tally.record(False, f"{r.status_code}:{reason}")
            continue
        if not target.endswith("/echo"):
            tally.record(True)
            continue
        body = r.json()
        no_token = not body.get("authorization_present")
        # /echo answers 200 even to a revoked token (it does not check): counted, not a failure.
        invalid = not no_token and not body.get("token_valid")
        tally.record(not no_token, "no token", no_token=no_token, invalid=invalid)


def run(duration: float, concurrency: int, lifetime: int = 30, outage: float | None = None,
        log: IO[str] = sys.stderr) -> dict[str, Any]:
    """One soak run; returns the report (see the module docstring)."""
    # The token is served until EXPIRY_SKEW before expiry and refreshed from lifetime/2 on: an
    # outage shorter than that window (with room for the backoff's next try) never starves clients.
    window = lifetime / 2 - EXPIRY_SKEW
    if window < 3:
        raise ValueError(f"--token-lifetime {lifetime} is too short: use at least {int(2 * (EXPIRY_SKEW + 3))}")
    outage = min(outage if outage is not None else window * 0.5, window * 0.5)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        soak = Soak(Path(tmp), lifetime, log)
        tally = Tally()
        stop = threading.Event()
        events: list[dict[str, Any]] = []
        rss: list[tuple[float, int]] = []
        try:
            fake = soak.start_fake()
            proxy, url, ca = soak.start_proxy(fake)
            proxy_ready = time.monotonic()
            start = time.monotonic()
            end = start + duration
            workers = [threading.Thread(target=load_worker, args=(url, ca, tally, stop), daemon=True)
                       for _ in range(concurrency)]
            for w in workers:
                w.start()

            def sample() -> None:
                while not stop.wait(max(1.0, duration / 60)):
                    rss.append((round(time.monotonic() - start, 1), rss_kib(proxy.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()

            def event(name: str) -> None:
                events.append({"t": round(time.monotonic() - start, 1), "event": name})
                print(f"soak: {events[-1]['t']:7.1f}s {name}", file=log, flush=True)

            modes = ["500", "revoke", "429"]
            n = 0
            fetched: float | None = proxy_ready  # the proxy fetched its first token just before
            while time.monotonic() < end:
                if n:
                    fetched = soak.wait_for_fetch(end)
                if fetched is None:
                    break
                mode = modes[n % len(modes)]
                n += 1
                if mode == "revoke":
                    at = fetched + lifetime / 4
                    if at + 2 > end:
                        break
                    time.sleep(max(0.0, at - time.monotonic()))
                    soak.admin_post("revoke_all")
                    event("revoked every token issued so far")
                    continue
                # Fail the token endpoint from just before the refresh is due, for `outage` seconds.
                at = fetched + lifetime / 2 - 1
                if at + outage + 2 > end:
                    break
                time.sleep(max(0.0, at - time.monotonic()))
                soak.admin_post(f"token_failure?mode={mode}")
                event(f"token endpoint failing ({mode}) for {outage:.1f}s")
                time.sleep(outage)
                soak.admin_post("token_failure?mode=none")
                event("token endpoint recovered")
            time.sleep(max(0.0, end - time.monotonic()))
            stop.set()
            for w in workers:
                w.join(40)
            rss.append((round(time.monotonic() - start, 1), rss_kib(proxy.pid)))
            fake_stats = soak.stats()
            alive = proxy.poll() is None
        finally:
            stop.set()
            soak.stop()
    warm = [kib for t, kib in rss if t >= min(duration * 0.2, 10)] or [kib for _, kib in rss]
    return {
        "duration_s": duration,
        "concurrency": concurrency,
        "token_lifetime_s": lifetime,
        "outage_s": round(outage, 1),
        "requests_sent": tally.sent,
        "requests_succeeded": tally.succeeded,
        "requests_failed": tally.failed,
        "failures": dict(tally.failures),
        "answers_without_token": tally.without_token,
        "answers_with_invalid_token": tally.invalid_token,
        "requests_per_s": round(tally.sent / duration, 1),
        "fake": fake_stats,
        "events": events,
        "rss_kib": {"first": rss[0][1] if rss else None, "after_warmup": warm[0] if warm else None,
                    "end": rss[-1][1] if rss else None, "max": max(k for _, k in rss) if rss else None},
        "rss_samples": rss,
        "proxy_alive_at_end": alive,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    p.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    p.add_argument("--token-lifetime", type=int, default=30, help="token lifetime at the fake (default 30)")
    p.add_argument("--outage", type=float, default=None, help="seconds the token endpoint fails each time")
    args = p.parse_args(argv)
    try:
        report = run(args.duration, args.concurrency, args.token_lifetime, args.outage)
    except (ValueError, RuntimeError) as e:
        print(f"soak: {e}", file=sys.stderr)
        return 64
    print(json.dumps(report))
    r = report["rss_kib"]
    print(f"soak: {report['requests_sent']} requests, {report['requests_succeeded']} ok, "
          f"{report['requests_failed']} failed {report['failures'] or ''}; "
          f"{report['answers_without_token']} without token; token fetches {report['fake']['token_fetches']}; "
          f"RSS {r['after_warmup']} -> {r['end']} KiB (max {r['max']})", file=sys.stderr)
    ok = report["requests_failed"] == 0 and report["answers_without_token"] == 0 and report["proxy_alive_at_end"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
