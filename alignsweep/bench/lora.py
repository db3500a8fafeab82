"""LoRA vs full fine-tuning, side by side in one run (part of `python -m alignsweep bench`;
`--lora-only` runs this part alone): one DAA job each way through the command line, on the
embedded models (CPU), evaluation off, alternated, the medians.

Both start from the same SFT model (`model.lora.sft=false`) and read the same shared reference
log-probs (a LoRA job's reference is the base with adapters disabled, the same weights and cache
key), so what differs is the training itself. Measured per job: the step time (`seconds.train` of
its status over its steps), the whole process's peak resident memory (`ru_maxrss` of that child
alone, `os.wait4`; it includes the ~0.5 GB of Python, torch and TRL), and what the job's models
hold (status.json `memory`: weights counted once per storage, gradients, optimizer state).
Writes its own section of BENCHMARKS.md, between the `bench-lora` markers.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARK_BEGIN, MARK_END = "<!-- bench-lora:begin -->", "<!-- bench-lora:end -->"
SHAPES = {  # the shapes of `alignsweep.bench.overhead`: the defaults, and a job of the findings experiments
    "default": ["model=embedded_tiny"],
    "findings": ["experiment=overopt_embedded", "hydra.mode=RUN", "model=embedded_small"],
}
VARIANTS = {"full": [], "lora": ["lora=default", "model.lora.sft=false"]}


def _job(work: Path, cache: Path, run: Path, overrides: list[str]) -> dict:
    """One job as a child process: its wall time, peak RSS (bytes) and status."""
    from alignsweep.bench.overhead import EVAL_OFF, _env
    from alignsweep.results import rundir

    cmd = [sys.executable, "-m", "alignsweep", *overrides, "logger=none", *EVAL_OFF,
           "train.resumable=false", f"hydra.run.dir={run}", f"paths.cache_dir={cache}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{err[-3000:]}")
    status = rundir.read_status(run)
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "train_s": status["seconds"]["train"],
            "steps": status["step"], "memory": status["memory"]}


def bench_lora(work: Path, cache: Path, quick: bool, shape: str = "default", repeats: int = 5) -> dict:
    overrides = SHAPES[shape]
    jobs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for name, extra in VARIANTS.items():  # untimed: the SFT model and the shared reference log-probs
        warmup = _job(work, cache, work / f"lora-{shape}-{name}-warmup", [*overrides, *extra])
        if quick:  # --quick: the warm-up jobs are the ones measured (its numbers only show that it runs)
            jobs[name].append(warmup)
    for repeat in range(0 if quick else repeats):
        for name in (list(VARIANTS) if repeat % 2 == 0 else list(reversed(VARIANTS))):
            jobs[name].append(_job(work, cache, work / f"lora-{shape}-{name}-{repeat}", [*overrides, *VARIANTS[name]]))
    median = {name: {key: statistics.median(j[key] for j in runs) for key in ("wall_s", "peak_rss_bytes", "train_s")}
              for name, runs in jobs.items()}
    step = {name: median[name]["train_s"] / jobs[name][0]["steps"] for name in jobs}
    return {"shape": shape, "overrides": overrides, "jobs": jobs, "step_s": step,
            "step_time_ratio": step["full"] / step["lora"],
            "peak_rss_ratio": median["full"]["peak_rss_bytes"] / median["lora"]["peak_rss_bytes"]}


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def render(results: dict) -> str:
    machine = results["machine"]
    lines = [
        MARK_BEGIN,
        f"Measured {results['date']} on {machine['platform']}, {machine['cpus']} CPUs (shared with other work: "
        f"noisy), torch {machine['torch']}, GPU: {machine['gpu'] or 'none'}" + (" (--quick)" if results["quick"] else "")
        + ". LoRA: `lora=default` (r=16, alpha=32, all linear layers), full SFT shared by both.",
        "",
        "| job (evaluation off) | full fine-tuning | LoRA | full / LoRA |",
        "|---|---|---|---|",
    ]
    for b in results["lora"]:
        full, lora = b["jobs"]["full"][0]["memory"], b["jobs"]["lora"][0]["memory"]
        held = {k: v["weights_bytes"] + v["gradients_bytes"] + v["optimizer_bytes"] for k, v in (("f", full), ("l", lora))}
        what = f"{b['shape']} shape ({b['overrides'][-1].split('=')[1]}, {b['jobs']['full'][0]['steps']} steps)"
        lines += [
            f"| {what}: step time | {b['step_s']['full'] * 1000:.0f} ms | {b['step_s']['lora'] * 1000:.0f} ms | "
            f"**{b['step_time_ratio']:.2f}x** (medians of {len(b['jobs']['full'])}) |",
            f"| {what}: trainable parameters | {full['trainable']:,} | {lora['trainable']:,} | "
            f"{full['trainable'] / lora['trainable']:.1f}x |",
            f"| {what}: weights + gradients + optimizer state held | {_mb(held['f'])} (weights {_mb(full['weights_bytes'])}, "
            f"reference copy included) | {_mb(held['l'])} (weights {_mb(lora['weights_bytes'])}, one copy) | "
            f"**{held['f'] / held['l']:.2f}x** |",
            f"| {what}: peak resident memory of the job's process | "
            f"{_mb(statistics.median(j['peak_rss_bytes'] for j in b['jobs']['full']))} | "
            f"{_mb(statistics.median(j['peak_rss_bytes'] for j in b['jobs']['lora']))} | {b['peak_rss_ratio']:.2f}x |",
        ]
    lines += ["", "Every job is in `bench/results_lora.json`.", MARK_END]
    return "\n".join(lines)


def run(work: Path, cache: Path, quick: bool, out: Path, markdown: str | None) -> dict:
    """Both shapes (the default one only with `quick`), results written to out/results_lora.json
    and the section of `markdown`."""
    import json
    from datetime import datetime, timezone

    from alignsweep.bench.overhead import machine, write_section

    shapes = ["default"] if quick else list(SHAPES)
    benches = []
    for shape in shapes:
        print(f"[bench] LoRA vs full fine-tuning, {shape} shape ...", flush=True)
        benches.append(bench_lora(work, cache, quick, shape))
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
               "quick": quick, "lora": benches}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results_lora.json").write_text(json.dumps(results, indent=1))
    section = render(results)
    if markdown:
        write_section(Path(markdown), section, MARK_BEGIN, MARK_END)
    print(section)
    return results
