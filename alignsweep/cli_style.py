"""The one command-line style of alignsweep's tools (argparse): `prog` is the command users type,
`--help` shows the tool's module docstring, `-h`/`--help` exit 0 and a usage mistake exits 2."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


def tool_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` for the tool `command` (e.g. "python -m alignsweep collect"),
    described by `doc` (the tool module's docstring, shown as written)."""
    return argparse.ArgumentParser(prog=command, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


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
