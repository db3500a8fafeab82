"""`process_exit.exit_process`: a process that loaded torch ends without the interpreter's
teardown, but only after everything an exit must do: threads that are not daemons finish, atexit
handlers run, logs and buffered output are written, the exit code is kept."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import atexit, logging, sys, threading, time
import torch  # noqa: F401  (what makes it skip the teardown)
from alignsweep.runtime.process_exit import exit_process
out = sys.argv[1]
def late():
    time.sleep(0.5)
    open(out + "/thread", "w").write("done")
threading.Thread(target=late).start()
atexit.register(lambda: open(out + "/atexit", "w").write("ran"))
logging.basicConfig(filename=out + "/log", level=logging.INFO)
logging.getLogger("x").info("logged")
print("buffered line")  # stdout is a pipe: block-buffered, not yet written
exit_process(3)
print("never")
"""


def test_exit_process_finishes_what_an_exit_must_and_keeps_the_code(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered line\n"
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
    assert "logged" in (tmp_path / "log").read_text()


def test_a_process_without_torch_exits_the_ordinary_way():
    code = "import sys; from alignsweep.runtime.process_exit import exit_process; exit_process(4)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 4 and "torch" not in proc.stderr


def test_the_submitit_entry_takes_submitits_arguments_and_refuses_others():
    from alignsweep.launch.submitit_entry import folder_from

    assert folder_from(["-u", "-m", "submitit.core._submit", "/sweep/.submitit/12_3"]) == "/sweep/.submitit/12_3"
    proc = subprocess.run([sys.executable, "-m", "alignsweep.launch.submitit_entry", "some", "thing"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage: python -m alignsweep.launch.submitit_entry" in proc.stderr  # argparse: usage mistake
    assert "Traceback" not in proc.stderr
