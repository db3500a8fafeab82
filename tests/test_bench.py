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
        [sys.executable, "-m", "alignsweep", "bench", "--quick", "--out", str(tmp_path), "--markdown", str(markdown)],
        capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "ALIGNSWEEP_BENCH_CACHE": str(sft_cache)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["sharing"]["max_metric_difference"] <= 1e-5
    assert results["dry_run"]["jobs"] == 63 and results["dry_run"]["torch_imported"] is False
    assert results["collect"]["rows"] == 600
    assert results["overhead"]["alignsweep_s"] and results["overhead"]["plain_trl_s"]
    lora = json.loads((tmp_path / "results_lora.json").read_text())["lora"][0]["jobs"]  # LoRA vs full, one each
    assert 0 < lora["lora"][0]["memory"]["trainable"] < lora["full"][0]["memory"]["trainable"]
    text = markdown.read_text()
    assert "intro" in text and "after" in text and "old" not in text and "dry run of the 63-job paper grid" in text


def test_gpu_benchmark_script_runs_on_the_tiny_architecture(tmp_path):
    """CI has no GPU: `--tiny` trains the embedded architecture through both trainers, so the
    script that a GPU machine runs (`make bench-gpu`) is known to work."""
    proc = subprocess.run(
        [sys.executable, "-m", "alignsweep", "bench-gpu", "--tiny", "--lora", "--steps", "2", "--warmup", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_results_tiny.json").read_text())
    assert [v["variant"] for v in results["variants"]] == ["trl", "alignsweep", "alignsweep_lora"]
    for v in results["variants"]:
        assert len(v["step_s"]) == 2 and v["tokens_per_s"] > 0 and v["tokens_per_step"] == 32 * 2 * 40


def test_gpu_benchmark_without_a_gpu_says_so():
    proc = subprocess.run([sys.executable, "-m", "alignsweep", "bench-gpu"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_model_flops_count():
    from alignsweep.bench.gpu import model_flops_per_token, peak_flops

    # PaLM's count: 6N + 12 L H S for the policy, 2N + 4 L H S for the reference's forward pass
    assert model_flops_per_token(100, 2, 8, 10, reference=False) == 6 * 100 + 12 * 2 * 8 * 10
    assert model_flops_per_token(100, 2, 8, 10, reference=True) == 8 * 100 + 16 * 2 * 8 * 10
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12 and peak_flops("NVIDIA H100 PCIe") == 756.0e12
    assert peak_flops("Some Other Card") is None


def test_every_shape_the_full_benchmark_runs_composes_with_evaluation_off(cli):
    """`make bench` runs shapes that --quick skips (the findings experiments' shape); each, with the
    benchmark's own overrides for a job without evaluation, must compose. The findings shape
    evaluates at sqrt(KL) targets, which refuses eval.enabled=false alone: `make bench` stopped at
    its first findings-shape job."""
    from alignsweep.bench.lora import SHAPES
    from alignsweep.bench.overhead import EVAL_OFF, OVERHEAD_SHAPES, SHARING_SHAPES

    shapes = {tuple(o) for o in OVERHEAD_SHAPES.values()} | {tuple(o) for o in SHAPES.values()}
    shapes |= {("-m", f"model={s['model']}", *s["overrides"]) for s in SHARING_SHAPES.values()}
    for overrides in sorted(shapes):
        proc = cli(*overrides, *EVAL_OFF, "logger=none", "dry_run=true", check=False)
        assert proc.returncode == 0, (overrides, proc.stderr[-1500:])
    refused = cli(*OVERHEAD_SHAPES["findings"], "eval.enabled=false", "dry_run=true", check=False)
    assert refused.returncode == 2 and "eval.at" in refused.stderr  # why EVAL_OFF has eval.at=steps
