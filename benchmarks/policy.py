"""What the ``[[rule]]`` policy costs per request (``python -m benchmarks.policy``), issue 12's "Measure".

Two parts (default both, about two minutes):

``micro``  µs per call, in-process: ``request_call`` (the Call a seen request makes: host,
    API method, resource), ``Policy.decide`` with 0, 10 and 100 rules (the matching rule first,
    in the middle, last, or none matching so the default decides), and the two together as
    ``Rules.requestheaders`` runs them. The rules are the ones the macro part writes to its
    config files: allow/deny rules over other buckets, other API methods, other hosts and other
    HTTP methods, then one rule that allows the benchmark's call (storage.objects.get on
    projects/_/buckets/demo-bucket/objects/hello.txt).
``macro``  the proxy process's CPU seconds per request (small GETs of a storage object over
    keep-alive connections, through ``python -m proxy serve`` against the fake Google) in three
    configurations, one process each, rotating which goes first every round: no config
    (``none``); 100 rules with ``default = "allow"`` where the last rule matches (``allow100``);
    100 rules with ``default = "deny"`` where the last rule allows (``deny100``). Ratios to
    ``none`` are paired per round (so drift in the machine's load cancels) and also given as
    ratios of the medians. Token fetches: each proxy is started alone and hit by a burst of
    concurrent first requests, counting the fake's token endpoint requests around it; at the end
    each proxy's audit log must name exactly one token (``token_id``) for all its requests.
    ``Policy.decide`` indexes the rules by everything but the resource and compiles the
    candidates' resource globs (the first run measured 1.17x/1.23x CPU without that;
    docs/benchmarks.md).

Prints one JSON line per measurement and a summary; writes the whole run to
benchmarks/results/policy.json (ignored by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # = benchmarks.procs.ROOT (that import is heavy)
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "policy.json"
MODES = ("none", "allow100", "deny100")
MATCHING_RULE = "demo-bucket-read"
BENCH_HOST = "storage.googleapis.com"
BENCH_PATH = "/storage/v1/b/demo-bucket/o/hello.txt"  # = benchmarks.session.SMALL_PATH
DENIED_PATH = "/storage/v1/b/not-allowed-bucket/o/x.txt"  # no rule allows it: deny100 must answer 403


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _emit(row: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(row), flush=True)
    return row


# -- the rules -----------------------------------------------------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(v) for v in value) + "]"
    return json.dumps(value)


def make_rules(count: int, match_at: str = "last") -> list[dict[str, Any]]:
    """``count`` rules: ``count - 1`` (or ``count`` with ``match_at="none"``) that do not match the
    benchmark's call, alternating allow/deny over four realistic shapes, plus the one that allows
    it at ``match_at`` (first, middle, last or none)."""
    others = count if match_at == "none" else max(count - 1, 0)
    rules: list[dict[str, Any]] = []
    for i in range(others):
        action = "allow" if i % 2 == 0 else "deny"
        kind = i % 4
        if kind == 0:  # same API method, another team's buckets: both globs are tried
            rule = {"name": f"team-{i}-objects", "api_methods": ["storage.objects.get", "storage.objects.list"],
                    "resources": [f"projects/_/buckets/team-{i}-*/objects/**"]}
        elif kind == 1:  # another HTTP method on log buckets
            rule = {"name": f"logs-{i}-writes", "methods": ["DELETE", "PUT"],
                    "resources": [f"projects/_/buckets/logs-{i}/objects/**"]}
        elif kind == 2:  # another host
            rule = {"name": f"compute-{i}", "hosts": ["compute.googleapis.com"],
                    "api_methods": [f"compute.instances.{('get', 'list', 'start', 'stop')[i % 4]}"]}
        else:  # other API methods, by glob
            rule = {"name": f"bigquery-{i}", "api_methods": ["bigquery.tables.*", "bigquery.jobs.insert"],
                    "resources": [f"projects/project-{i}/datasets/**"]}
        rules.append({"name": rule.pop("name"), "action": action, **rule})
    if match_at != "none" and count:
        match = {"name": MATCHING_RULE, "action": "allow", "api_methods": ["storage.objects.get"],
                 "resources": ["projects/_/buckets/demo-*/objects/**"]}
        at = {"first": 0, "middle": len(rules) // 2, "last": len(rules)}[match_at]
        rules.insert(at, match)
    return rules


def policy_toml(rules: list[dict[str, Any]], default: str) -> str:
    lines = [f"default = {json.dumps(default)}", ""]
    for rule in rules:
        lines.append("[[rule]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in rule.items()]
        lines.append("")
    return "\n".join(lines)


def build(rules: list[dict[str, Any]], default: str, workdir: Path, name: str) -> Any:
    """The Policy the proxy builds from this file (read_policy_file + build_policy, default host)."""
    from addons.policy_file import build_policy, read_policy_file

    path = workdir / f"{name}.toml"
    path.write_text(policy_toml(rules, default))
    return build_policy(read_policy_file(path), inject_host=["*.googleapis.com"])


# -- micro ---------------------------------------------------------------------------------------

def per_call_us(fn: Callable[[], object], seconds: float, repeats: int = 5) -> float:
    """Median over ``repeats`` timeit batches of µs per call, each batch lasting about ``seconds``."""
    timer = timeit.Timer(fn)
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= seconds / 4 or number >= 10_000_000:
            break
        number *= 4 if elapsed < seconds / 40 else 2
    number = max(1, int(number * seconds / max(elapsed, 1e-9)))
    return statistics.median(t / number * 1e6 for t in timer.repeat(repeats, number))


def micro(seconds: float, workdir: Path) -> dict[str, Any]:
    from addons import google_api
    from addons.policy_model import Policy, request_call

    out: dict[str, Any] = {"part": "micro", "loadavg_at_start": _loadavg(), "python_optimize": sys.flags.optimize}

    def call() -> Any:
        return request_call(BENCH_HOST, "GET", BENCH_PATH, "", None)

    the_call = call()
    assert the_call.api_method == "storage.objects.get", the_call
    out["request_call_us"] = round(per_call_us(call, seconds), 2)
    out["google_api_describe_us"] = round(per_call_us(
        lambda: google_api.describe(BENCH_HOST, "GET", BENCH_PATH, ""), seconds), 2)
    empty = Policy(default="allow")
    out["decide_0_rules_us"] = round(per_call_us(lambda: empty.decide(the_call), seconds), 3)
    for count in (10, 100):
        for match_at in ("first", "middle", "last", "none"):
            if count == 10 and match_at == "middle":
                continue
            policy = build(make_rules(count, match_at), "deny", workdir, f"micro-{count}-{match_at}")
            assert len(policy.rules) == count, (count, len(policy.rules))
            decision = policy.decide(the_call)
            expected = MATCHING_RULE if match_at != "none" else None
            assert decision.rule_name == expected, (count, match_at, decision)
            out[f"decide_{count}_rules_match_{match_at}_us"] = round(
                per_call_us(lambda policy=policy: policy.decide(the_call), seconds), 2)
            if match_at == "last":  # what Rules.requestheaders runs per request
                out[f"request_call_plus_decide_{count}_rules_last_us"] = round(
                    per_call_us(lambda policy=policy: policy.decide(call()), seconds), 2)
    out["loadavg_at_end"] = _loadavg()
    return _emit(out)


# -- macro ---------------------------------------------------------------------------------------

def _audit_summary(path: Path) -> dict[str, Any]:
    token_ids: set[str] = set()
    rules: dict[str, int] = {}
    records = 0
    if path.exists():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            records += 1
            if rec.get("token_id"):
                token_ids.add(rec["token_id"])
            key = str(rec.get("rule"))
            rules[key] = rules.get(key, 0) + 1
    return {"audit_records": records, "distinct_token_ids": len(token_ids), "rule_counts": rules}


def macro(rounds: int, duration: float, concurrency: int, burst: int, workdir: Path,
          modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    from benchmarks import procs
    from benchmarks.session import Config, Session, probe

    start_row = _emit({"part": "macro", "loadavg_at_start": _loadavg(), "cpus": os.cpu_count(),
                       "rounds": rounds, "duration_s": duration, "concurrency": concurrency,
                       "modes": list(modes)})
    configs = {
        "allow100": policy_toml(make_rules(100, "last"), "allow"),
        "deny100": policy_toml(make_rules(100, "last"), "deny"),
    }
    session = Session(Config(modes=(), rounds=rounds, duration=duration), workdir, log=lambda msg: None)
    tokens: dict[str, dict[str, int]] = {}
    probes: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]] = []
    try:
        session.fake = fake = procs.start_fake(workdir)
        stats_at_start = procs.fake_stats(fake)
        for mode in modes:
            base = mode
            extra: list[str] = []
            if base in configs:
                cfg_file = workdir / f"{base}.toml"
                cfg_file.write_text(configs[base])
                extra = ["--config", str(cfg_file)]
            before = procs.fake_stats(fake)
            proxy = procs.start_gap(fake, workdir / mode, f"gap-{mode}", *extra)
            session.proxies[mode] = proxy
            # the first requests of this proxy's lifetime, all at once: one token fetch expected
            first = session.load(mode, session.spec(mode, concurrency=burst, requests=burst * 4, warmup=0))
            after = procs.fake_stats(fake)
            tokens[mode] = {"burst_connections": burst, "burst_requests": first["all_requests"],
                            "burst_errors": first["errors"],
                            "token_fetches": after["token_fetches"] - before["token_fetches"],
                            "token_requests": after["token_requests"] - before["token_requests"]}
            probes[mode] = {"allowed_path": probe(proxy.port, proxy.info["ca"], BENCH_PATH),
                            "unlisted_bucket": probe(proxy.port, proxy.info["ca"], DENIED_PATH)}
            _emit({"part": "macro-start", "mode": mode, **tokens[mode], "probe_statuses": probes[mode]})
        for rnd in range(rounds):
            order = list(modes[rnd % len(modes):] + modes[:rnd % len(modes)])
            for mode in order:
                res = session.load(mode, session.spec(mode, concurrency=concurrency, duration=duration,
                                                      warmup=0.3))
                rows.append(_emit({
                    "part": "macro-run", "round": rnd, "mode": mode, "requests": res["requests"],
                    "errors": res["errors"], "statuses": res["statuses"], "rps": round(res["rps"], 1),
                    "p50_ms": round(res["p50_ms"], 3),
                    "proxy_cpu_ms_per_req": round(res["proxy_cpu_s"] / max(res["requests"], 1) * 1000, 4),
                }))
        stats_at_end = procs.fake_stats(fake)
    finally:
        session.stop()
    for mode in modes:  # the audit log is complete once its proxy has stopped
        tokens[mode].update(_audit_summary(workdir / mode / f"gap-{mode}-audit.jsonl"))
    summary: dict[str, Any] = {"part": "macro-summary", "rounds": rounds, "duration_s": duration,
                               "concurrency": concurrency,
                               "token_fetches_whole_run": stats_at_end["token_fetches"]
                               - stats_at_start["token_fetches"],
                               "proxies": len(modes)}
    cpu = {(r["round"], r["mode"]): r["proxy_cpu_ms_per_req"] for r in rows}
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        summary[f"{mode}_cpu_ms_per_req"] = round(statistics.median(r["proxy_cpu_ms_per_req"] for r in mine), 4)
        summary[f"{mode}_rps"] = round(statistics.median(r["rps"] for r in mine), 1)
        summary[f"{mode}_errors"] = sum(r["errors"] for r in mine)
        summary[f"{mode}_requests"] = sum(r["requests"] for r in mine)
    pairs = [(mode, "none") for mode in modes if mode != "none" and "none" in modes]
    for mode, base in pairs:
        summary[f"{mode}/{base}_cpu_paired"] = round(statistics.median(
            cpu[rnd, mode] / cpu[rnd, base] for rnd in range(rounds)), 3)
        summary[f"{mode}/{base}_cpu_of_medians"] = round(
            summary[f"{mode}_cpu_ms_per_req"] / summary[f"{base}_cpu_ms_per_req"], 3)
    summary["tokens"] = tokens
    summary["probes"] = probes
    summary["loadavg_at_start"] = start_row["loadavg_at_start"]
    summary["loadavg_at_end"] = _loadavg()
    _emit(summary)
    return {"runs": rows, "summary": summary}


# -- main ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="micro,macro", help="which parts (default micro,macro)")
    p.add_argument("--rounds", type=int, default=7, help="macro: rotating rounds (default 7)")
    p.add_argument("--duration", type=float, default=3.0, help="macro: seconds of load per run (default 3)")
    p.add_argument("--concurrency", type=int, default=8, help="macro: keep-alive connections (default 8)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"macro: proxies to compare (default {','.join(MODES)})")
    p.add_argument("--burst", type=int, default=16,
                   help="macro: concurrent first connections per proxy for the token count (default 16)")
    p.add_argument("--micro-seconds", type=float, default=0.2,
                   help="micro: seconds per timeit batch (5 batches per figure; default 0.2)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="JSON results (default benchmarks/results/policy.json)")
    p.add_argument("--workdir", type=Path, help="keep config files and proxies' logs here (default: a temp dir)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        print(f"unknown mode(s) {bad}: {', '.join(MODES)}", file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if parts - {"micro", "macro"}:
        print(f"unknown part(s) {sorted(parts - {'micro', 'macro'})}: micro or macro", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: dict[str, Any] = {
        "command": "python -m benchmarks.policy " + " ".join(shlex.quote(a) for a in argv),
        "started_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory(prefix="gap-policy-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if "micro" in parts:
            results["micro"] = micro(args.micro_seconds, workdir)
        if "macro" in parts:
            results["macro"] = macro(args.rounds, args.duration, args.concurrency, args.burst, workdir, modes)
    results["wall_s"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{results['command']}: {results['wall_s']} s; JSON: {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
