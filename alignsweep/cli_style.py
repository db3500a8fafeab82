"""The one command-line style of alignsweep's tools (argparse): `prog` is the command users type,
`--help` shows the tool's module docstring, `-h`/`--help` exit 0 and a usage mistake exits 2."""

from __future__ import annotations

import argparse


def tool_parser(command: str, doc: str | None) -> argparse.ArgumentParser:
    """An `argparse.ArgumentParser` for the tool `command` (e.g. "python -m alignsweep collect"),
    described by `doc` (the tool module's docstring, shown as written)."""
    return argparse.ArgumentParser(prog=command, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
