"""The benchmark runs (at reduced size, as CI does); its numbers are read in BENCHMARKS.md, not asserted
here, except the correctness ones: shared reference log-probs change no metric, a dry run imports no
torch and lists the whole grid, the collector keeps every row."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_quick_runs_and_writes_its_results(tmp_path, sft_cache):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text("# Benchmarks\n\nintro\n\n<!-- bench:begin -->\nold\n<!-- bench:end -->\n\nafter\n")
    proc = subprocess.run(
        [sys.executable, "-m", "alignsweep.bench", "--quick", "--out", str(tmp_path), "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "ALIGNSWEEP_BENCH_CACHE": str(sft_cache)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["sharing"]["max_metric_difference"] <= 1e-5
    assert results["dry_run"]["jobs"] == 63 and results["dry_run"]["torch_imported"] is False
    assert results["collect"]["rows"] == 600
    assert results["overhead"]["alignsweep_s"] and results["overhead"]["plain_trl_s"]
    text = markdown.read_text()
    assert "intro" in text and "after" in text and "old" not in text and "dry run of the 63-job paper grid" in text
