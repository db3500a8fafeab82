"""What an archived sweep needs to say where it came from: the command that launched it, its
overrides, the date, alignsweep's version and code commit, and the versions of the libraries that
trained it. Recorded at every launch (a sweep's manifest.json `launches`, a single run's
provenance.json) and shown by `python -m alignsweep report`.

Reads package metadata and, when alignsweep runs from a git checkout, `git rev-parse`; imports
neither torch nor the libraries it names.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

PACKAGES = ("alignsweep", "torch", "transformers", "trl", "datasets", "accelerate", "peft", "hydra-core", "wandb")
FILE = "provenance.json"


def command_line(argv: Sequence[str]) -> str:
    """The command as the user typed it, in the `python -m alignsweep ...` form either entry point takes."""
    return "python -m alignsweep " + shlex.join(list(argv[1:])) if len(argv) > 1 else "python -m alignsweep"


def code_commit() -> str | None:
    """The git commit of the alignsweep source tree (with `-dirty` when it has uncommitted changes), or
    None when alignsweep is not run from a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(argv: Sequence[str] | None = None, overrides: Sequence[str] | None = None) -> dict:
    """A JSON-able record of this launch: command, overrides, UTC date, commit, versions."""
    argv = list(sys.argv if argv is None else argv)
    return {
        "command": command_line(argv),
        "overrides": list(overrides) if overrides is not None else [a for a in argv[1:] if "=" in a],
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "commit": code_commit(),
        "python": sys.version.split()[0],
        "versions": versions(),
    }
