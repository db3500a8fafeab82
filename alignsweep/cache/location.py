"""Where the sweep cache lives by default (`paths.cache_dir`): not in the folder a sweep starts from.

The default does not depend on the folder a sweep starts from, so a second sweep started from
another folder finds the SFT models, prepared data and reference log-probs the first one cached:
`$ALIGNSWEEP_CACHE_DIR` when set (on a cluster: a shared filesystem every node sees), else the
user cache directory of the platform (`platformdirs.user_cache_dir("alignsweep")`, e.g.
`~/.cache/alignsweep` on Linux, which honours `$XDG_CACHE_HOME`). `paths.cache_dir=DIR` overrides it.
"""

from __future__ import annotations

import os

ENV = "ALIGNSWEEP_CACHE_DIR"


def default_cache_dir() -> str:
    """`$ALIGNSWEEP_CACHE_DIR`, else the platform's user cache directory for alignsweep."""
    import platformdirs

    return os.path.expanduser(os.environ.get(ENV) or platformdirs.user_cache_dir("alignsweep"))


def register_paths() -> None:
    """The `alignsweep_cache_dir` resolver conf/config.yaml uses for `paths.cache_dir` (idempotent)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("alignsweep_cache_dir", default_cache_dir, replace=True)
