"""What a SLURM task of a sweep runs: submitit's own job entry point, ended without the
interpreter's teardown once the job's result is saved.

submitit starts every task as `PYTHON -u -m submitit.core._submit FOLDER`, where PYTHON is the
executor's `python` command. The SLURM launcher sets it to `python -u -m alignsweep.launch.submitit_entry`,
so the task runs `python -u -m alignsweep.launch.submitit_entry -u -m submitit.core._submit FOLDER`: this
module runs submitit's `submitit_main` on FOLDER exactly as `submitit.core._submit` would (it loads
the pickled task, runs it, saves its result or its error), then, if it returned, ends the process
with `process_exit.exit_process`: Python's own exit after a job that loaded torch spends seconds
freeing modules one by one, while the allocation, and its GPUs, are still held. A failing job, a
time limit or a pre-emption (submitit requeues and exits) leaves the ordinary way.
"""

from __future__ import annotations

import sys

from alignsweep.cli_style import tool_parser

SUBMITIT_MODULE = "submitit.core._submit"


def folder_from(argv: list[str]) -> str:
    """The job folder from submitit's arguments (`-u -m submitit.core._submit FOLDER`); a usage
    mistake exits 2 with the usage line, `-h` prints this module's docstring and exits 0."""
    parser = tool_parser("python -m alignsweep.launch.submitit_entry", __doc__)
    parser.add_argument("-u", action="store_true", help="unbuffered output (passed on by submitit; always on here)")
    parser.add_argument("-m", dest="module", required=True, choices=[SUBMITIT_MODULE], help="submitit's entry module")
    parser.add_argument("folder", help="the job folder submitit prepared")
    return parser.parse_args(argv).folder


def main() -> None:
    folder = folder_from(sys.argv[1:])
    from submitit.core.submission import submitit_main

    from alignsweep.runtime.process_exit import exit_process

    sys.argv = [SUBMITIT_MODULE, folder]
    submitit_main()
    exit_process(0)


if __name__ == "__main__":
    main()
