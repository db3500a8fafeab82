"""A sweep's progress in the terminal: the overall bar with elapsed time and ETA above the running
jobs, events as lines, a failure printed once; SFT reports its steps, a cached SFT model no SFT
phase (issue: product surface)."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from alignsweep.launch.progress import ProgressPrinter, describe
from alignsweep.results import rundir


def jobs(tmp_path: Path, n: int) -> list:
    """Prepared jobs as the composer hands them to a launcher: number, resolved job, run dir."""
    out = []
    for num in range(n):
        run = tmp_path / str(num)
        run.mkdir()
        job = SimpleNamespace(algo="dpo", model="embedded_tiny", beta=0.1 * (num + 1), alpha=None, gamma=None)
        out.append(SimpleNamespace(num=num, job=job, run_dir=run))
    return out


def test_a_terminal_shows_the_overall_bar_with_elapsed_and_eta_and_a_row_per_running_job(tmp_path):
    from rich.console import Console

    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    sweep = jobs(tmp_path, 4)
    printer = ProgressPrinter(sweep, every_s=0, console=console)
    assert printer.live is not None
    printer.note(sweep[0], "already completed, skipped")
    printer.note(sweep[1], "started")
    rundir.write_status(sweep[1].run_dir, phase="train", step=12, total_steps=32, state="running")
    printer.tick()
    printer.live.refresh()
    shown = screen.getvalue()
    assert "sweep" in shown and "1/4" in shown and "elapsed" in shown and "ETA" in shown
    assert "#1 dpo embedded_tiny beta=0.2" in shown and "train step 12/32" in shown
    rundir.write_status(sweep[1].run_dir, state="failed", error="RuntimeError: boom")
    printer.finished(sweep[1], 1)
    printer.summary()
    shown = screen.getvalue()
    assert "2/4" in shown and "[  1/4 done] #0 dpo embedded_tiny beta=0.1: already completed" in shown


def test_without_a_terminal_the_events_are_lines_and_a_failure_is_printed_once(tmp_path, capsys):
    sweep = jobs(tmp_path, 2)
    printer = ProgressPrinter(sweep, every_s=0)
    assert printer.live is None  # pytest's captured stdout is no terminal
    for job in sweep:
        printer.note(job, "started")
    rundir.write_status(sweep[0].run_dir, state="completed", wall_s=3.2)
    rundir.write_status(sweep[1].run_dir, state="failed", error="ValueError: the data is empty")
    printer.finished(sweep[0], 0)
    printer.finished(sweep[1], 1)
    printer.summary()
    out = capsys.readouterr().out
    assert "#0 dpo embedded_tiny beta=0.1: completed in 3s" in out
    assert out.count("ValueError: the data is empty") == 1
    assert "1 of 2 jobs completed, 1 failed" in out and "FAILED" in out and rundir.LOG in out


@pytest.mark.parametrize(
    "status,text",
    [
        ({"phase": "sft", "sft_step": 40, "sft_total_steps": 200}, "sft step 40/200"),
        ({"phase": "train", "step": 3, "total_steps": 32, "last_win_rate": 0.625, "checkpoints_done": 2},
         "train step 3/32, win rate 0.62 after 2 evals"),
        ({"phase": "prepare"}, "prepare"),
        ({"phase": "train", "step": 9, "total_steps": 64, "last_win_rate": 0.4, "checkpoints_done": 2,
          "sqrt_kl_targets": [{"target": 0.5, "state": "reached"}, {"target": 1, "state": "pending"}]},
         "train step 9/64, win rate 0.40 after 2 evals, sqrt(KL) targets 1/2 crossed"),
    ],
)
def test_a_jobs_phase_in_words(status, text):
    assert describe(status) == text


@pytest.mark.slow
def test_sft_reports_its_steps_and_a_cached_model_reports_no_sft_phase(tmp_path):
    from alignsweep.data import embedded
    from alignsweep.train import models, sft
    from tests.test_config import compose_cfg

    cfg = compose_cfg(f"paths.cache_dir={tmp_path}", "sft.epochs=2", "data.embedded.n_sft=64")
    vocab = embedded.vocabulary(cfg.data.embedded.n_words, cfg.data.embedded.n_fillers)
    tokenizer = models.build_word_tokenizer(vocab.tokens)
    task = embedded.generate(cfg.data.embedded)
    heard: list[dict] = []

    def build():
        return models.build_tiny_model(cfg.model.arch, tokenizer, 0)

    first = sft.ensure_sft(cfg, task, build, tokenizer, {"use_cpu": True}, report=lambda **f: heard.append(f))
    assert heard[0] == {"phase": "sft"}
    steps = [f for f in heard if "sft_step" in f]
    assert steps and steps[-1]["sft_step"] == steps[-1]["sft_total_steps"] > 0
    heard.clear()
    assert sft.ensure_sft(cfg, task, build, tokenizer, {"use_cpu": True}, report=lambda **f: heard.append(f)) == first
    assert heard == []
