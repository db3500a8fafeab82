"""Shared fixtures: the CLI as a user runs it, in a scratch directory, with one SFT cache per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def sft_cache(tmp_path_factory) -> Path:
    """One SFT cache for the whole session: jobs with the same settings share the model, as in a sweep."""
    return tmp_path_factory.mktemp("sft-cache")


@pytest.fixture
def cli(tmp_path, sft_cache):
    """Run `python -m alignsweep ...` in a scratch directory; returns the CompletedProcess."""

    def run(*args: str, module: str = "alignsweep", check: bool = True, env: dict | None = None, timeout: int = 600):
        cmd = [sys.executable, "-m", module, *args]
        if module == "alignsweep":
            cmd.append(f"paths.cache_dir={sft_cache}")
        full_env = dict(os.environ, TQDM_DISABLE="1")
        for var in ("WANDB_API_KEY", "WANDB_MODE"):  # no key: alignsweep must choose offline by itself
            full_env.pop(var, None)
        full_env.update(env or {})
        proc = subprocess.run(cmd, cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
        return proc

    run.cwd = tmp_path
    return run
