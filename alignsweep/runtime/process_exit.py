"""Ending a process that has loaded torch, without the interpreter's teardown.

After a job, Python's own exit spends ~2 s here freeing modules and objects one by one (torch,
transformers, TRL, the models): time in which the job is done but its process, and on a cluster
its GPU, is still held. `exit_process` does what an exit must (waits for threads that are not
daemons, runs the atexit handlers, so wandb, logging and temporary folders finish as they would,
flushes stdout and stderr) and then ends the process at once, as multiprocessing does for its
children. A process that never imported torch exits the ordinary way: it has nothing to save.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn


def exit_process(code: int) -> NoReturn:
    if "torch" not in sys.modules:
        sys.exit(code)
    import atexit
    import logging
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone: nothing more can be said there
            pass
    os._exit(code)
