"""`python -m alignsweep bench [--quick]` (`make bench`): what a sweep costs beyond its training.

Measured side by side in one run, on this machine (they are shared and noisy: read the ratios):
1. sharing: a sweep of reference-based jobs with what its jobs have in common shared through the
   sweep's cache (the cleaned and tokenised data, `data.share_prepared`; the reference log-probs
   of the training and held-out pairs, `train.share_ref_logps`; the step-0 evaluation of the SFT
   model, `eval.share_step0`) vs recomputed in every job; and the shared sweep again with every
   job a fresh interpreter instead of forked from the local launcher's warm server
   (`hydra.launcher.fork_workers`). Wall time of the whole sweep and the jobs' own time (what a
   cluster bills), metrics compared; on the default shape (the tiny model, 32 steps) and on the
   shape of the findings experiments (embedded_small, 128 steps).
2. overhead: one DAA job through alignsweep (evaluation off) vs a plain TRL script doing the same
   training (the job's SFT model and its resolved settings: data, batch, steps, optimiser),
   whole-process wall time, alternated; a job of the default shape (seconds: the fixed cost of starting a job shows) and one of the findings shape.
3. dry run of the 63-job paper grid: wall time, and whether torch was imported.
4. collecting a sweep of 10,000 checkpoint rows.
5. LoRA vs full fine-tuning: step time and memory of one job each way (`alignsweep.bench.lora`).
Writes bench/results.json and the section between the markers in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from alignsweep.cli_style import tool_parser

ROOT = Path(__file__).resolve().parents[2]
MARK_BEGIN, MARK_END = "<!-- bench:begin -->", "<!-- bench:end -->"
PLAIN_TRL = '''
import sys, torch, yaml
from types import SimpleNamespace
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
from alignsweep.data import embedded
from alignsweep.data.pairs import clean_pairs, token_lengths
# the settings of the alignsweep job it is compared with (its resolved config.yaml), its SFT model
job, sft_dir, threads, out = yaml.safe_load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), sys.argv[4]
data, train, model = job["data"], job["train"], job["model"]
assert job["algo"]["name"] == "dpo" and not model["gradient_checkpointing"]
torch.set_num_threads(threads)
tok = AutoTokenizer.from_pretrained(sft_dir)
task = SimpleNamespace(**data["embedded"])
rows, _ = clean_pairs(embedded.generate(task)["train"], lengths=token_lengths(tok), max_length=data["max_length"])
policy = AutoModelForCausalLM.from_pretrained(sft_dir)
ref = AutoModelForCausalLM.from_pretrained(sft_dir)
args = DPOConfig(output_dir=out, per_device_train_batch_size=model["per_device_batch"],
                 gradient_accumulation_steps=model["grad_accum"], learning_rate=train["lr"],
                 num_train_epochs=train["epochs"], optim=train["optimizer"], lr_scheduler_type=train["lr_scheduler"],
                 warmup_steps=train["warmup_steps"], max_grad_norm=train["max_grad_norm"], max_length=data["max_length"],
                 beta=job["algo"]["beta"] if job["beta"] is None else job["beta"], save_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True, bf16=False,
                 seed=job["seed"], logging_steps=10,
                 # as the job (the model config's setting, false here); TRL's own default is true
                 activation_checkpointing=model["gradient_checkpointing"])
DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok).train()
'''


def _env() -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", OMP_NUM_THREADS="1", ALIGNSWEEP_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def _alignsweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "alignsweep", *args]


SHARING_MODES = {
    # what the jobs of a sweep have in common: nothing shared, all of it shared, and all of it
    # shared with every job started as a fresh interpreter instead of forked from the warm server
    "per_job": {"share": False, "fork": True},
    "shared": {"share": True, "fork": True},
    "fresh_processes": {"share": True, "fork": False},
}


# The sweeps the sharing is measured on: the defaults (32 steps of the tiny model), and the shape of
# the findings experiments (experiment=overopt_embedded: 128 steps, its data, judge and training
# settings), each with the grid of `bench_sharing` (the command line's grid wins over the experiment's).
SHARING_SHAPES = {
    "default": {"model": "embedded_tiny", "overrides": []},
    "findings": {"model": "embedded_small", "overrides": ["experiment=overopt_embedded"]},
}


def bench_sharing(work: Path, cache: Path, quick: bool, model: str = "embedded_tiny",
                  overrides: Sequence[str] = (), modes: Sequence[str] = tuple(SHARING_MODES), repeats: int = 3) -> dict:
    from alignsweep.results import rundir

    grid = ["algo=dpo,ipo,slic", "beta=0.1,1.0"] if not quick else [  # --quick: 2 jobs, less evaluation
        "algo=dpo,ipo", "beta=0.1", "train.checkpoints=2", "eval.prompts=64"]
    grid += [f"model={model}", *overrides]
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    sweeps = {}
    # untimed (not with --quick: its numbers only show that it runs): build the SFT model the sweeps
    # start from (one job of the same shape, a few pairs), so that no timed sweep pays for it
    if not quick:
        _timed(_alignsweep("-m", f"model={model}", *overrides, "algo=dpo", "beta=0.1", "logger=none",
                           *EVAL_OFF, "data.embedded.n_train=64", "hydra.launcher.collect=false",
                           f"hydra.sweep.dir={work / f'sharing-warmup-{model}'}", f"paths.cache_dir={cache}"), work)
    for repeat in range(1 if quick else repeats):  # the modes alternated, the medians
        order = list(modes) if repeat % 2 == 0 else list(reversed(modes))
        for mode in order:
            share, fork = SHARING_MODES[mode]["share"], SHARING_MODES[mode]["fork"]
            for shared in ("ref_logps", "step0", "data"):
                shutil.rmtree(cache / shared, ignore_errors=True)
            sweep = work / f"sharing-{model}-{mode}-{repeat}"
            # a sweep directory that exists would have its completed jobs skipped, not timed
            assert not sweep.exists(), f"{sweep} exists"
            times[mode].append(_timed(_alignsweep(
                "-m", *grid, "logger=none", f"train.share_ref_logps={share}", f"eval.share_step0={share}",
                f"data.share_prepared={share}", f"hydra.launcher.fork_workers={fork}",
                f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}", "hydra.launcher.collect=false",
            ), work))
            sweeps[mode] = sweep
    diff = 0.0
    runs = sorted(p.name for p in sweeps["shared"].iterdir() if (p / rundir.CONFIG).exists())
    for other in (m for m in modes if m != "shared"):
        for run in runs:
            for a, b in zip(rundir.read_metrics(sweeps["shared"] / run), rundir.read_metrics(sweeps[other] / run)):
                diff = max([diff] + [abs(a[k] - b[k]) for k in a
                                     if isinstance(a[k], float) and isinstance(b.get(k), float)])
    median = {mode: statistics.median(t) for mode, t in times.items()}
    # the jobs' own time (the GPU time a cluster would bill), summed over the last repeat's sweeps
    job_s = {mode: sum((rundir.read_status(sweeps[mode] / run) or {}).get("wall_s", 0.0) for run in runs)
             for mode in modes}
    result = {
        "jobs": len(runs),
        "model": model,
        "overrides": list(overrides),
        "speedup": median["per_job"] / median["shared"],
        "job_time_speedup": job_s["per_job"] / job_s["shared"],
        "max_metric_difference": diff,
    }
    for mode in modes:
        result[f"{mode}_s"] = times[mode]
        result[f"{mode}_job_s"] = job_s[mode]
    if "fresh_processes" in modes:
        result["fork_speedup"] = median["fresh_processes"] / median["shared"]
    return result


# The jobs the overhead is measured on: the defaults (32 steps of the tiny model, seconds: the fixed
# cost of starting a job shows), and a job of the findings experiments (128 steps of embedded_small).
OVERHEAD_SHAPES = {
    "default": [],
    "findings": ["experiment=overopt_embedded", "hydra.mode=RUN", "model=embedded_small"],
}
EVAL_OFF = ("eval.enabled=false", "eval.at=steps")  # the findings experiments evaluate at sqrt(KL) targets


def bench_overhead(work: Path, cache: Path, quick: bool, overrides: Sequence[str] = (), repeats: int = 5) -> dict:
    from alignsweep.results import rundir

    script = work / "plain_trl.py"
    script.write_text(PLAIN_TRL)
    name = "-".join(o.split("=")[-1] for o in overrides if o.startswith("model=")) or "default"

    def run_ours(run: Path) -> float:
        return _timed(_alignsweep(
            *overrides, "logger=none", *EVAL_OFF, "train.resumable=false", "train.share_ref_logps=false",
            "data.share_prepared=false", f"hydra.run.dir={run}", f"paths.cache_dir={cache}",
        ), work)

    # untimed: builds the SFT model if need be; the plain script takes the job's SFT model and settings
    # (--quick: it is the one timed job of ours; its numbers only show that it runs)
    warmup = run_ours(work / f"overhead-{name}-warmup")
    sft_dir = rundir.read_status(work / f"overhead-{name}-warmup")["sft_model"]
    job_config = work / f"overhead-{name}-warmup" / rundir.CONFIG
    times: dict[str, list[float]] = {"ours": [warmup] if quick else [], "plain": []}
    for repeat in range(1 if quick else repeats):  # a noisy figure: pairs alternated, the medians
        for which in (("ours", "plain") if repeat % 2 == 0 else ("plain", "ours")):
            if which == "ours" and not quick:
                times["ours"].append(run_ours(work / f"overhead-{name}-{repeat}"))
            elif which == "plain":
                times["plain"].append(_timed([sys.executable, str(script), str(job_config), sft_dir, "1",
                                              str(work / f"plain-{name}-{repeat}")], work))
    return {"overrides": list(overrides), "alignsweep_s": times["ours"], "plain_trl_s": times["plain"],
            "ratio": statistics.median(times["ours"]) / statistics.median(times["plain"])}


def bench_dry_run(work: Path, quick: bool) -> dict:
    times = []
    for _ in range(0 if quick else 3):
        times.append(_timed(_alignsweep("experiment=overopt_tldr", "dry_run=true",
                                        f"hydra.sweep.dir={work / 'dry'}"), work))
    start = time.perf_counter()
    probe = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "alignsweep", "experiment=overopt_tldr", "dry_run=true",
         f"hydra.sweep.dir={work / 'dry'}"],
        cwd=work, env=_env(), capture_output=True, text=True,
    )
    times += [time.perf_counter() - start] if quick else []  # --quick: the probe's time alone
    torch_imported = any(line.rstrip().endswith("| torch") for line in probe.stderr.splitlines())
    jobs = sum(line.startswith("#") for line in probe.stdout.splitlines())
    return {"jobs": jobs, "seconds": times, "median_s": statistics.median(times), "torch_imported": torch_imported}


def bench_collect(work: Path, rows: int) -> dict:
    import yaml

    from alignsweep.results import rundir
    from alignsweep.results.collect import collect

    sweep = work / "big-sweep"
    base = _default_run_config(work)
    per_run = 6
    for i in range(rows // per_run + (rows % per_run > 0)):
        run = sweep / str(i)
        run.mkdir(parents=True)
        config = dict(base, beta=0.01 * (1 + i % 50))
        (run / rundir.CONFIG).write_text(yaml.safe_dump(config))
        (run / rundir.CONFIG_JSON).write_text(json.dumps(config))  # as launchers write them
        n = min(per_run, rows - i * per_run)
        (run / rundir.METRICS).write_text("".join(
            json.dumps({"step": s * 6, "kl": 0.1 * s, "sqrt_kl": (0.1 * s) ** 0.5, "win_rate": 0.5, "win_rate_se": 0.03,
                        "sqrt_kl_se": 0.01, "progress": s / 5}) + "\n" for s in range(n)))
        rundir.write_status(run, state="completed")
    start = time.perf_counter()
    table = collect(sweep, quiet=True)
    elapsed = time.perf_counter() - start
    return {"rows": len(table), "runs": table["run"].nunique(), "seconds": elapsed}


def _default_run_config(work: Path) -> dict:
    import yaml

    out = subprocess.run(_alignsweep("--cfg", "job", "--resolve", f"paths.output_dir={work}",
                                     f"paths.cache_dir={work}"), cwd=work, env=_env(), capture_output=True, text=True)
    return yaml.safe_load(out.stdout)


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _sharing_rows(s: dict, shape: str, cpus: int) -> list[str]:
    steps = "128 steps" if shape == "findings" else "32 steps"
    rows = [
        f"| {s['jobs']}-job sweep, {shape} shape ({s['model']}, {steps}, {cpus} jobs at a time): data, reference "
        f"log-probs and step 0 shared vs per job | "
        f"{statistics.median(s['shared_s']):.1f} s vs {statistics.median(s['per_job_s']):.1f} s: "
        f"**{s['speedup']:.2f}x** (jobs' own time: {s['job_time_speedup']:.2f}x); metrics differ by at most "
        f"{s['max_metric_difference']:.1e}; medians of {len(s['shared_s'])} | >= 1.25x, <= 1e-5 |",
    ]
    if "fork_speedup" in s:
        rows.append(
            f"| the same sweep (shared), jobs forked from the launcher's warm server vs fresh interpreters | "
            f"{statistics.median(s['shared_s']):.1f} s vs {statistics.median(s['fresh_processes_s']):.1f} s: "
            f"**{s['fork_speedup']:.2f}x** | |"
        )
    return rows


def _overhead_rows(results: dict) -> list[str]:
    rows = []
    for key, what in (("overhead", "default shape: embedded_tiny, 32 steps"),
                      ("overhead_findings", "findings shape: embedded_small, 128 steps")):
        o = results.get(key)
        if o:
            rows.append(
                f"| one job ({what}; evaluation off) vs a plain TRL script with its settings | "
                f"{statistics.median(o['alignsweep_s']):.1f} s vs {statistics.median(o['plain_trl_s']):.1f} s: "
                f"**{o['ratio']:.2f}x** ({len(o['alignsweep_s'])} pairs) | <= 1.05x |"
            )
    return rows


def render(results: dict) -> str:
    d, c = results["dry_run"], results["collect"]
    cpus = results["machine"]["cpus"]
    sharing_rows = _sharing_rows(results["sharing"], "default", cpus)
    if results.get("sharing_findings"):
        sharing_rows += _sharing_rows(results["sharing_findings"], "findings", cpus)
    lines = [
        MARK_BEGIN,
        f"Measured {results['date']} on {results['machine']['platform']}, {results['machine']['cpus']} CPUs, "
        f"torch {results['machine']['torch']}, GPU: {results['machine']['gpu'] or 'none'}"
        + (" (reduced size: --quick)" if results["quick"] else "") + ".",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        *sharing_rows,
        *_overhead_rows(results),
        f"| dry run of the {d['jobs']}-job paper grid | **{d['median_s']:.2f} s**, torch imported: "
        f"{'yes' if d['torch_imported'] else 'no'} | < 3 s, no torch |",
        f"| collect {c['rows']} checkpoint rows ({c['runs']} runs) | **{c['seconds']:.2f} s** | < 2 s |",
        "",
        "Every repeat is in `bench/results.json`. Reproduce with `make bench`.",
        MARK_END,
    ]
    return "\n".join(lines)


def write_section(md: Path, section: str, begin: str, end: str) -> None:
    """Replace the text between the `begin` and `end` markers of `md` (they are part of `section`);
    append the section when the markers are missing, create the file when it is."""
    text = md.read_text() if md.exists() else "# Benchmarks\n\n" + begin + "\n" + end + "\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n" + section + "\n"
    md.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = tool_parser("python -m alignsweep bench", __doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (what CI runs)")
    parser.add_argument("--no-findings-shape", action="store_true",
                        help="measure on the default shape only (the findings shape takes ~11 min of the ~21)")
    parser.add_argument("--out", default="outputs/bench", help="folder for results.json (default: %(default)s; make bench: bench/)")
    parser.add_argument("--markdown", default=None,
                        help="a file whose bench section to update (make bench: BENCHMARKS.md); default: none")
    parser.add_argument("--lora-only", action="store_true", help="only LoRA vs full fine-tuning (alignsweep.bench.lora)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="alignsweep-bench-"))
    cache = Path(os.environ.get("ALIGNSWEEP_BENCH_CACHE", ROOT / ".cache" / "alignsweep"))
    from alignsweep.bench import lora

    try:
        if args.lora_only:
            lora.run(work, cache, args.quick, Path(args.out), args.markdown)
            return 0
        print("[bench] dry run ...", flush=True)
        dry = bench_dry_run(work, args.quick)
        print("[bench] collect ...", flush=True)
        col = bench_collect(work, 600 if args.quick else 10_000)
        print("[bench] sweep with and without sharing, forked and fresh workers ...", flush=True)
        shape = SHARING_SHAPES["default"]
        sharing = bench_sharing(work, cache, args.quick, shape["model"], shape["overrides"])
        sharing_findings = None
        if not (args.quick or args.no_findings_shape):
            print("[bench] the same on the findings shape ...", flush=True)
            shape = SHARING_SHAPES["findings"]
            sharing_findings = bench_sharing(work, cache, False, shape["model"], shape["overrides"],
                                             modes=("per_job", "shared"))
        print("[bench] one job vs plain TRL ...", flush=True)
        overhead = bench_overhead(work, cache, args.quick, OVERHEAD_SHAPES["default"])
        overhead_findings = None
        if not (args.quick or args.no_findings_shape):
            print("[bench] one job of the findings shape vs plain TRL ...", flush=True)
            overhead_findings = bench_overhead(work, cache, False, OVERHEAD_SHAPES["findings"], repeats=3)
        lora.run(work, cache, args.quick, Path(args.out), args.markdown)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "quick": args.quick,
        "sharing": sharing,
        "sharing_findings": sharing_findings,
        "overhead": overhead,
        "overhead_findings": overhead_findings,
        "dry_run": dry,
        "collect": col,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    section = render(results)
    if args.markdown:
        write_section(Path(args.markdown), section, MARK_BEGIN, MARK_END)
    print(section)
    return 0


if __name__ == "__main__":
    from alignsweep.cli_style import run_tool

    sys.exit(run_tool(main, sys.argv[1:]))
