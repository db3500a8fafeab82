"""The one command-line style of alignsweep's tools (argparse): `prog` is the command users type,
`--help` shows the tool's module docstring, `-h`/`--help` exit 0 and a usage mistake exits 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Optional


def tool_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` for the tool `command` (e.g. "python -m alignsweep collect"),
    described by `doc` (the tool module's docstring, shown as written)."""
    return argparse.ArgumentParser(prog=command, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_sweep_dir(
    parser: argparse.ArgumentParser, help: str, holds: Optional[Callable[[Path], Optional[str]]] = None
) -> None:
    """The positional `SWEEP_DIR` argument of a tool that reads a sweep directory (collect, report,
    status, sync), checked as argparse checks a type: a path that does not exist or is not a
    directory, or one that `holds(path)` finds lacking (it returns what is missing, e.g. "no run
    directories (no */config.yaml)"; None when the directory will do), is a usage mistake: the
    usage line and `error: argument SWEEP_DIR: PATH ...`, exit 2. Parsed as a `pathlib.Path`."""

    def sweep_dir(text: str) -> Path:
        path = Path(text)
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{text} does not exist")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not a directory")
        lacking = holds(path) if holds is not None else None
        if lacking:
            raise argparse.ArgumentTypeError(f"{text} holds {lacking}")
        return path

    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", type=sweep_dir, help=help)


def run_tool(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """`main(argv)`'s exit code; when the reader of our output goes away (`... | head`), 141
    (128 + SIGPIPE, as a shell's own tools) instead of a BrokenPipeError traceback."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # nothing more can be written; keep Python's final flush from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
