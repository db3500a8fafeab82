"""`python -m alignsweep [-m] key=value ...`: compose the config and run (or, with -m, launch) it."""

import hydra
from omegaconf import DictConfig

from alignsweep.schema import register

register()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from alignsweep.app import run_or_exit

    run_or_exit(cfg)


if __name__ == "__main__":
    main()
