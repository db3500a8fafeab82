"""The rooms: every entry point answers --help in one style, the import contracts hold, and the
dry run of the paper grid imports no torch (issue: rooms that show the architecture)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (the command users type, as argv after `python -m`), the prog its usage line names
ENTRY_POINTS = [
    (["alignsweep", "collect"], "python -m alignsweep collect"),
    (["alignsweep", "report"], "python -m alignsweep report"),
    (["alignsweep", "status"], "python -m alignsweep status"),
    (["alignsweep", "sync"], "python -m alignsweep sync"),
    (["alignsweep", "cache"], "python -m alignsweep cache"),
    (["alignsweep", "findings"], "python -m alignsweep findings"),
    (["alignsweep", "bench"], "python -m alignsweep bench"),
    (["alignsweep", "bench-gpu"], "python -m alignsweep bench-gpu"),
    (["alignsweep.worker"], "python -m alignsweep.worker"),
    (["alignsweep.launch.submitit_entry"], "python -m alignsweep.launch.submitit_entry"),
]


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("command,prog", ENTRY_POINTS, ids=[p for _, p in ENTRY_POINTS])
def test_every_entry_point_answers_help_with_its_docstring(command, prog, flag):
    import importlib

    from alignsweep.__main__ import TOOLS

    proc = subprocess.run([sys.executable, "-m", *command, flag], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog}"), proc.stdout[:200]
    module = TOOLS[command[1]] if len(command) > 1 else command[0]
    if module == "alignsweep.worker":
        module = "alignsweep.worker.job"
    doc = importlib.import_module(module).__doc__
    first = doc.strip().splitlines()[0]
    assert first in proc.stdout, f"{prog} --help does not show its docstring's first line {first!r}"


@pytest.mark.parametrize("command,prog", ENTRY_POINTS[:3] + ENTRY_POINTS[7:8], ids=lambda x: str(x))
def test_a_usage_mistake_exits_2_with_the_usage_line(command, prog):
    proc = subprocess.run([sys.executable, "-m", *command, "a", "b", "c"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"usage: {prog}" in proc.stderr and "Traceback" not in proc.stderr


def test_the_import_contracts_hold():
    """`lint-imports` (import-linter): the layers of pyproject.toml and no torch in config/launch."""
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "alignsweep").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_dry_run_of_the_paper_grid_imports_no_torch(tmp_path):
    code = (
        "import sys, runpy\n"
        "sys.argv = ['alignsweep', '-m', 'experiment=overopt_tldr', 'dry_run=true', "
        f"'hydra.sweep.dir={tmp_path}/s']\n"
        "try:\n    runpy.run_module('alignsweep', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert "#62 " in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "HEAVY []" in proc.stdout


SWEEP_TOOLS = ["collect", "report", "status", "sync"]


@pytest.mark.parametrize("tool", SWEEP_TOOLS)
def test_the_sweep_tools_check_their_sweep_dir_alike(tool, tmp_path, capsys):
    """collect, report, status and sync each checked SWEEP_DIR their own way (report called a
    missing path one with no runs; status did not say a file is not a directory): one argparse
    argument (`alignsweep.cli_style.add_sweep_dir`), one message per mistake, usage line, exit 2."""
    import importlib

    from alignsweep.__main__ import TOOLS

    main = importlib.import_module(TOOLS[tool]).main
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    cases = {"missing": "does not exist", "file": "is not a directory"}
    if tool != "sync":  # sync finds no offline runs in an empty directory and says so itself
        cases["empty"] = "holds n"
    for name, says in cases.items():
        path = str(tmp_path / name)
        try:
            code = main([path])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        assert code == 2 and f"usage: python -m alignsweep {tool}" in err, (name, err)
        assert f"error: argument SWEEP_DIR: {path} {says}" in err, (name, err)
