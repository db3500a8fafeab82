"""`python -m alignsweep.worker RUN_DIR`: run the job a launcher prepared (`alignsweep.worker.job`)."""

from alignsweep.runtime.process_exit import exit_process
from alignsweep.worker.job import main

if __name__ == "__main__":
    exit_process(main())
