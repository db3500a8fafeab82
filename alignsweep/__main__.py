"""`python -m alignsweep [-m] key=value ...`: compose the config and run (or, with -m, launch) it.

`python -m alignsweep TOOL ...` runs one of the tools on a sweep directory instead (each answers
`--help`): collect, report, status, sync, cache, findings, bench, bench-gpu.
"""

import importlib
import sys

import hydra
from omegaconf import DictConfig

from alignsweep.config.help import CONF, register_help
from alignsweep.config.schema import register

# `python -m alignsweep TOOL ...`: the tool's module, whose `main(argv)` returns the exit code
TOOLS = {
    "collect": "alignsweep.analysis.summarize",
    "report": "alignsweep.analysis.report",
    "status": "alignsweep.results.status",
    "sync": "alignsweep.results.sync",
    "cache": "alignsweep.cache.cli",
    "findings": "alignsweep.analysis.findings",
    "bench": "alignsweep.bench.overhead",
    "bench-gpu": "alignsweep.bench.gpu",
}

register()
register_help()


# An absolute path: as a console script (`alignsweep`) Hydra would read a relative one as the
# package `conf`, which does not exist, and find no config at all.
@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def main(cfg: DictConfig) -> None:
    from alignsweep.app import run_or_exit

    run_or_exit(cfg)


def run_tool(name: str, argv: list[str]) -> int:
    """Run the tool `name` (a key of `TOOLS`) with its arguments; returns its exit code."""
    from alignsweep.cli_style import run_tool as guarded

    return guarded(importlib.import_module(TOOLS[name]).main, argv)


def complete() -> int:
    """Hydra's bash completion (`eval "$(alignsweep -sc install=bash)"`), internal groups left out."""
    import contextlib
    import io
    import os
    import re

    from alignsweep.config.help import offered

    # Hydra reads `python -m alignsweep ...` as a script name followed by `-m` (multirun)
    line = os.environ.get("COMP_LINE", "")
    os.environ["COMP_LINE"] = re.sub(r"^\s*\S*python[\d.]*\s+-m\s+alignsweep\b", "alignsweep", line)
    answer = io.StringIO()
    with contextlib.redirect_stdout(answer):
        try:
            main()
        except SystemExit as exc:
            if exc.code:
                return int(exc.code) if isinstance(exc.code, int) else 1
    print(offered(answer.getvalue()))
    return 0


def entry() -> None:
    """A tool when the first argument names one; else `main`, with exit code 2 for configuration
    errors Hydra reports before any job starts (an unknown group option, a misspelt key, a wrong
    type), as for alignsweep's own checks; a process that trained ends without the interpreter's
    slow teardown (`alignsweep.runtime.process_exit`)."""
    from alignsweep.errors import started
    from alignsweep.runtime.process_exit import exit_process

    if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
        sys.exit(run_tool(sys.argv[1], sys.argv[2:]))
    if {"-sc", "--shell-completion"} & set(sys.argv) and "query=bash" in sys.argv:
        sys.exit(complete())
    from alignsweep.config.lora import with_implied_lora

    sys.argv = with_implied_lora(sys.argv)  # model.lora.r=8 alone asks for LoRA
    try:
        main()
    except SystemExit as exc:
        if exc.code == 1 and not started():
            exit_process(2)
        if exc.code is not None and not isinstance(exc.code, int):
            raise  # a message: printed by the ordinary exit
        exit_process(exc.code or 0)
    exit_process(0)


if __name__ == "__main__":
    entry()
