"""Summaries (medians over rounds), ratios, targets, and the markdown table."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.session import MODES


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    mitm = subprocess.run([sys.executable, "-c", "import mitmproxy.version as v; print(v.VERSION)"],
                          capture_output=True, text=True, check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(), "mitmproxy": mitm,
            "kernel": platform.release(), "loadavg_1m_at_start": load}


def _med(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else float("nan")


def summarize_small(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    keys = sorted({(r["mode"], r["concurrency"]) for r in runs}, key=lambda k: (list(MODES).index(k[0]), k[1]))
    for mode, conc in keys:
        rs = [r for r in runs if r["mode"] == mode and r["concurrency"] == conc]
        cpu = [r["proxy_cpu_s"] / r["requests"] * 1000 if r["proxy_cpu_s"] is not None and r["requests"]
               else None for r in rs]
        ocpu = [r["origin_cpu_s"] / r["requests"] * 1000 if r["requests"] else None for r in rs]
        out.setdefault(mode, {})[str(conc)] = {
            "rps": _med([r["rps"] for r in rs]),
            "p50_ms": _med([r["p50_ms"] for r in rs]),
            "p99_ms": _med([r["p99_ms"] for r in rs]),
            "proxy_cpu_s_per_1k": _med(cpu),
            "origin_cpu_s_per_1k": _med(ocpu),
            "errors": sum(r["errors"] for r in rs),
            "rounds": len(rs),
            "rps_all": [round(r["rps"]) for r in rs],
        }
    return out


def ratios(small: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float]]:
    pairs = {"c/b": ("c", "b"), "c/a": ("c", "a"), "d/a": ("d", "a"), "d/a2": ("d", "a2"), "cO/c": ("cO", "c"),
             "cO/b": ("cO", "b"),
             "cS/b": ("cS", "b"), "c/cS": ("c", "cS")}
    out: dict[str, dict[str, float]] = {}
    for name, (x, y) in pairs.items():
        if x in small and y in small:
            out[name] = {conc: small[x][conc]["rps"] / small[y][conc]["rps"]
                         for conc in small[x] if conc in small[y] and small[y][conc]["rps"]}
    return out


def summarize_new_conn(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        rs = [r for r in runs if r["mode"] == mode]
        out[mode] = {
            "conn_per_s": _med([r["rps"] for r in rs]),
            "p50_ms": _med([r["p50_ms"] for r in rs]),
            "proxy_cpu_ms_per_conn": _med([r["proxy_cpu_s"] / r["requests"] * 1000
                                           if r["proxy_cpu_s"] is not None and r["requests"] else None
                                           for r in rs]),
        }
    return out


def summarize_large(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in runs:
        key = f"{r['kind']}:{r['mode']}"
        cur = out.setdefault(key, {"mib_s": [], "rss_growth_mb": [], "ok": True, "size": r["size"]})
        cur["mib_s"].append(r["mib_s"])
        if r["rss_growth_mb"] is not None:
            cur["rss_growth_mb"].append(r["rss_growth_mb"])
        cur["ok"] = cur["ok"] and r["ok"]
    for cur in out.values():
        cur["mib_s"] = _med(cur["mib_s"])
        cur["rss_growth_mb"] = max(cur["rss_growth_mb"]) if cur["rss_growth_mb"] else None
    return out


def build_summary(results: dict[str, Any]) -> dict[str, Any]:
    small = summarize_small(results.get("small_runs", []))
    summary: dict[str, Any] = {"small": small, "ratios": ratios(small)}
    if results.get("new_conn_runs"):
        summary["new_connection"] = summarize_new_conn(results["new_conn_runs"])
    if results.get("large_runs"):
        summary["large"] = summarize_large(results["large_runs"])
    summary["targets"] = targets(summary, results)
    return summary


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "–"
    return f"{v:,.{digits}f}"


def targets(summary: dict[str, Any], results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets beside the measured value (None = not measured in this run)."""
    small, rat = summary["small"], summary["ratios"]
    rows: list[dict[str, Any]] = []

    def add(name: str, target: str, value: float | None, ok: bool | None, fmt: str) -> None:
        rows.append({"target": name, "goal": target, "value": value, "met": ok, "shown": fmt})

    for conc in ("8", "32"):
        v = rat.get("c/b", {}).get(conc)
        add(f"intercepted req/s vs plain mitmdump, {conc} conns", "≥ 2.0×", v,
            None if v is None else v >= 2.0, f"{_fmt(v)}×")
    new_conn = summary.get("new_connection", {})
    if "c" in new_conn and "b" in new_conn and new_conn["b"]["proxy_cpu_ms_per_conn"]:
        v = new_conn["c"]["proxy_cpu_ms_per_conn"] / new_conn["b"]["proxy_cpu_ms_per_conn"]
        add("proxy CPU per new intercepted connection vs mitmdump", "≤ 0.6×", v, v <= 0.6, f"{_fmt(v)}×")
    if "c" in small and "a" in small and "1" in small["c"] and "1" in small["a"]:
        v = small["c"]["1"]["p50_ms"] - small["a"]["1"]["p50_ms"]
        add("added p50 latency at 1 conn (c − a)", "≤ 0.8 ms", v, v <= 0.8, f"{_fmt(v)} ms")
    for base in ("a", "a2"):
        v = rat.get(f"d/{base}", {}).get("32")
        add(f"tunnel req/s vs direct ({'same' if base == 'a2' else 'googleapis'} origin), 32 conns",
            "≥ 0.85×", v, None if v is None else v >= 0.85, f"{_fmt(v)}×")
    large = summary.get("large", {})
    for kind in ("download", "upload"):
        c, a = large.get(f"{kind}:c"), large.get(f"{kind}:a")
        if c and a:
            v = c["mib_s"] / a["mib_s"] if a["mib_s"] else None
            add(f"{kind} of {c['size'] / (1 << 20):,.0f} MiB: throughput vs direct", "≥ 0.3×", v,
                None if v is None else v >= 0.3 and c["ok"],
                f"{_fmt(v)}× ({_fmt(c['mib_s'], 0)} vs {_fmt(a['mib_s'], 0)} MiB/s)")
            g = c["rss_growth_mb"]
            add(f"{kind}: proxy RSS growth", "< 10 MB", g, None if g is None else g < 10, f"{_fmt(g, 1)} MB")
    tok = results.get("token")
    if tok:
        add(f"token fetches for {tok['requests']:,} requests at {tok['concurrency']} conns", "1",
            tok["token_fetches"], tok["token_fetches"] == 1, str(tok["token_fetches"]))
        v = tok["cold_start_first_200_s"]
        add("cold start → first proxied 200", "< 1.5 s", v, v < 1.5, f"{_fmt(v)} s")
    run = results.get("run_true")
    if run:
        if run.get("skipped"):
            add("`run -- true` wall time", "< 1.5 s", None, None, run["note"])
        else:
            add("`run -- true` wall time", "< 1.5 s", run["wall_s"], run["wall_s"] < 1.5, f"{_fmt(run['wall_s'])} s")
    return rows


def markdown(results: dict[str, Any], summary: dict[str, Any]) -> str:
    m = results["machine"]
    cfg = results["config"]
    started = f", {results['started_at']}" if results.get("started_at") else ""
    lines = [
        (f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, mitmproxy {m['mitmproxy']}, "
         f"Linux {m['kernel']}; load average at start {m['loadavg_1m_at_start']:.2f}. "
         "Load generator, fake Google and proxy on the same box (loopback)."),
        (f"Command: `{results['command'].strip()}`{started} — {cfg['rounds']} alternating rounds of "
         f"{cfg['duration']} s (medians), small request `GET {results['small_path']}`."),
        "",
        "| mode | conns | req/s | p50 ms | p99 ms | proxy CPU s / 1k req | origin CPU s / 1k req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, by_conc in summary["small"].items():
        for conc, s in by_conc.items():
            lines.append(f"| {mode}: {MODES[mode]} | {conc} | {_fmt(s['rps'], 0)} | {_fmt(s['p50_ms'])} | "
                         f"{_fmt(s['p99_ms'])} | {_fmt(s['proxy_cpu_s_per_1k'], 3)} | "
                         f"{_fmt(s['origin_cpu_s_per_1k'], 3)} |")
    rat = summary["ratios"]
    if rat:
        concs = sorted({c for r in rat.values() for c in r}, key=int)
        lines += ["", "| ratio (req/s) | " + " | ".join(f"{c} conns" for c in concs) + " |",
                  "|---|" + "---:|" * len(concs)]
        for name, r in rat.items():
            lines.append(f"| {name} | " + " | ".join(f"{_fmt(r.get(c))}×" for c in concs) + " |")
    peaks = results.get("proxy_peak_rss_mb", {})
    if peaks:
        lines += ["", "Proxy peak RSS (VmHWM) at the end: " + ", ".join(
            f"{k} {_fmt(v, 1)} MB" for k, v in peaks.items() if k != "d")]
    nc = summary.get("new_connection")
    if nc:
        lines += ["", "| new connection per request (1 conn) | conn/s | p50 ms | proxy CPU ms / conn |",
                  "|---|---:|---:|---:|"]
        for mode, s in nc.items():
            lines.append(f"| {mode}: {MODES[mode]} | {_fmt(s['conn_per_s'], 0)} | {_fmt(s['p50_ms'])} | "
                         f"{_fmt(s['proxy_cpu_ms_per_conn'])} |")
    large = summary.get("large")
    if large:
        lines += ["", "| large object | MiB/s | proxy RSS growth MB | ok |", "|---|---:|---:|---|"]
        for key, s in large.items():
            kind, mode = key.split(":")
            lines.append(f"| {kind} {s['size']:,} B via {mode} | {_fmt(s['mib_s'], 0)} | "
                         f"{_fmt(s['rss_growth_mb'], 1)} | {'yes' if s['ok'] else 'NO'} |")
    lines += ["", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in summary["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {t['goal']} | {t['shown']} | {met} |")
    return "\n".join(lines) + "\n"
