"""What a SLURM task of a sweep runs: submitit's own job entry point, ended without the
interpreter's teardown once the job's result is saved.

submitit starts every task as `PYTHON -u -m submitit.core._submit FOLDER`, where PYTHON is the
executor's `python` command. The SLURM launcher sets it to `python -u -m alignsweep.submitit_entry`,
so the task runs `python -u -m alignsweep.submitit_entry -u -m submitit.core._submit FOLDER`: this
module runs submitit's `submitit_main` on FOLDER exactly as `submitit.core._submit` would (it loads
the pickled task, runs it, saves its result or its error), then, if it returned, ends the process
with `process_exit.exit_process`: Python's own exit after a job that loaded torch spends seconds
freeing modules one by one, while the allocation, and its GPUs, are still held. A failing job, a
time limit or a pre-emption (submitit requeues and exits) leaves the ordinary way.
"""

from __future__ import annotations

import sys

SUBMITIT_MODULE = "submitit.core._submit"


def folder_from(argv: list[str]) -> str:
    """The job folder from submitit's arguments (`-u -m submitit.core._submit FOLDER`)."""
    args = [a for a in argv if a != "-u"]
    if len(args) != 3 or args[:2] != ["-m", SUBMITIT_MODULE]:
        raise SystemExit(f"usage: python -m alignsweep.submitit_entry -u -m {SUBMITIT_MODULE} FOLDER (got {' '.join(argv)})")
    return args[2]


def main() -> None:
    folder = folder_from(sys.argv[1:])
    from submitit.core.submission import submitit_main

    from alignsweep.process_exit import exit_process

    sys.argv = [SUBMITIT_MODULE, folder]
    submitit_main()
    exit_process(0)


if __name__ == "__main__":
    main()
