"""The benchmark's CI smoke run: it runs, prints the table, writes the JSON and table, fetches one token."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.proxyproc import ROOT, base_env


def test_quick_benchmark_prints_table_writes_json_and_fetches_one_token(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--output", str(output),
         "--workdir", str(tmp_path / "work")],
        cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mode | conns | req/s |" in proc.stdout
    assert "| target | goal | measured | met |" in proc.stdout
    assert output.with_suffix(".md").read_text() in proc.stdout  # the table, kept beside the JSON
    results = json.loads(output.read_text())
    assert results["token"]["token_fetches"] == 1
    assert results["token"]["errors"] == 0
    modes = {run["mode"] for run in results["small_runs"]}
    assert modes == {"a", "a2", "b", "c", "d"}
    assert all(run["requests"] > 0 for run in results["small_runs"])
