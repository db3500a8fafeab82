"""`python -m alignsweep [-m] key=value ...`: compose the config and run (or, with -m, launch) it."""

import hydra
from omegaconf import DictConfig

from alignsweep.schema import register

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from alignsweep.app import run_or_exit

    run_or_exit(cfg)


def entry() -> None:
    """`main`, with exit code 2 for configuration errors Hydra reports before any job starts
    (an unknown group option, a misspelt key, a wrong type), as for alignsweep's own checks; a
    process that trained ends without the interpreter's slow teardown (`process_exit`)."""
    from alignsweep.app import started
    from alignsweep.process_exit import exit_process

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
