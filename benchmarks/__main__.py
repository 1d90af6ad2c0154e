"""``python -m benchmarks``: gcp-auth-proxy vs direct vs plain mitmdump, on loopback, one session.

Prints the markdown table on stdout (progress on stderr) and writes the raw figures as JSON and
the table as markdown beside it (benchmarks/results/latest.json and latest.md, ignored by git).
Nothing tracked is written: docs/benchmarks.md quotes a run by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks import report
from benchmarks.procs import ROOT
from benchmarks.session import MODES, SMALL_PATH, Config, Session

DEFAULT_OUTPUT = ROOT / "benchmarks" / "results" / "latest.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="tiny counts for CI (< 60 s): 1 round of 0.5 s, 8 MiB objects, 500 token requests")
    p.add_argument("--rounds", type=int, help="alternating rounds per measurement (default 5; quick 1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 3; quick 0.5)")
    p.add_argument("--large-size", type=int, help="bytes for the large download/upload (default 1 GiB)")
    p.add_argument("--token-requests", type=int, help="requests for the token-fetch count (default 10000)")
    p.add_argument("--modes", default="a,a2,b,c,d",
                   help=f"comma-separated modes to compare ({', '.join(f'{k}: {v}' for k, v in MODES.items())})")
    p.add_argument("--only", default="small,newconn,large,token,run",
                   help="which parts to run (default all: small,newconn,large,token,run)")
    p.add_argument("--proxy-python-flags", default="", help="interpreter flags for gcp-auth-proxy, e.g. -O")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                   help="JSON results file; the markdown table goes beside it with a .md suffix "
                        "(default benchmarks/results/latest.json)")
    p.add_argument("--workdir", type=Path, help="keep processes' logs here (default: a temporary directory)")
    return p


def config_from(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.quick:
        cfg = Config(rounds=1, duration=0.5, warmup=0.1, large_size=8 << 20, token_requests=500,
                     new_conn_duration=0.5, run_repeats=1)
    cfg.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in cfg.modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s): {', '.join(unknown)}")
    if args.rounds:
        cfg.rounds = args.rounds
    if args.duration:
        cfg.duration = cfg.new_conn_duration = args.duration
    if args.large_size:
        cfg.large_size = args.large_size
    if args.token_requests:
        cfg.token_requests = args.token_requests
    cfg.proxy_python_flags = tuple(shlex.split(args.proxy_python_flags))
    return cfg


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from(args)
    parts = {p.strip() for p in args.only.split(",")}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gap-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results: dict = {"machine": report.machine(), "config": asdict(cfg), "small_path": SMALL_PATH,
                         "started_at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                         "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in argv)}
        session = Session(cfg, workdir)
        try:
            session.start()
            if "small" in parts:
                session.small_requests()
            if "newconn" in parts:
                session.new_connections()
            if "large" in parts:
                session.large()
            if "token" in parts:
                session.token_work()
            if "run" in parts:
                session.run_true()
            session.finish()
        finally:
            session.stop()
        results.update(session.results)
    results["wall_s"] = time.monotonic() - started
    summary = report.build_summary(results)
    results["summary"] = summary
    table = report.markdown(results, summary)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    table_file = args.output.with_suffix(".md")
    table_file.write_text(table)
    print(f"JSON: {args.output}; table: {table_file}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
