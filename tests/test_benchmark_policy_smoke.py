"""Smoke run of ``python -m benchmarks.policy`` with tiny parameters: it runs, prints the figures,
writes the JSON, every mode gets 200s, and each proxy fetches one token. No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.proxyproc import ROOT, base_env


def test_policy_benchmark_prints_figures_and_fetches_one_token_per_proxy(tmp_path: Path) -> None:
    output = tmp_path / "policy.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.policy", "--rounds", "1", "--duration", "0.3", "--concurrency", "2",
         "--burst", "4", "--micro-seconds", "0.002", "--modes", "none,allow100,deny100",
         "--output", str(output), "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    parts = {line["part"] for line in lines}
    assert {"micro", "macro", "macro-start", "macro-run", "macro-summary"} <= parts
    results = json.loads(output.read_text())

    micro = results["micro"]
    for count in (10, 100):
        assert micro[f"decide_{count}_rules_match_last_us"] > 0
        assert micro[f"request_call_plus_decide_{count}_rules_last_us"] > 0
    assert micro["decide_0_rules_us"] > 0 and micro["request_call_us"] > 0

    summary = results["macro"]["summary"]
    modes = ("none", "allow100", "deny100")
    for mode in modes:
        assert summary[f"{mode}_cpu_ms_per_req"] > 0
        assert summary[f"{mode}_requests"] > 0 and summary[f"{mode}_errors"] == 0
        tokens = summary["tokens"][mode]
        assert tokens["token_fetches"] == 1 and tokens["burst_errors"] == 0  # one per credential per lifetime
        assert tokens["distinct_token_ids"] == 1
        assert summary["probes"][mode]["allowed_path"] == 200
    # the rules really ran: the last rule decided, and default deny refuses an unlisted bucket
    for mode in modes[1:]:
        assert summary["tokens"][mode]["rule_counts"]["demo-bucket-read"] >= summary[f"{mode}_requests"]
        assert summary[f"{mode}/none_cpu_paired"] > 0
    assert summary["probes"]["deny100"]["unlisted_bucket"] == 403
    assert summary["probes"]["none"]["unlisted_bucket"] != 403
    assert summary["token_fetches_whole_run"] == len(modes)
    assert len(summary["loadavg_at_start"]) == 3 and len(summary["loadavg_at_end"]) == 3
