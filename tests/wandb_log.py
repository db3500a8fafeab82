"""Read back what a wandb run recorded, from its offline `.wandb` record log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def records(run_dir: Path) -> list[dict]:
    """Every record of the single offline wandb run under `run_dir`, via `wandb leet inspect --json`."""
    runs = list(Path(run_dir).glob("wandb/offline-run-*"))
    assert len(runs) == 1, f"expected one offline wandb run under {run_dir}, found {runs}"
    wandb_cli = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(runs[0])], capture_output=True, text=True, check=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def history(run_dir: Path) -> list[dict]:
    return [r["history"]["item"] for r in records(run_dir) if r["type"] == "history"]


def run_record(run_dir: Path) -> dict:
    return next(r["run"] for r in records(run_dir) if r["type"] == "run")


def strings(node):
    """Every string inside a nested dict/list (a run's config, a record), depth first."""
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node
