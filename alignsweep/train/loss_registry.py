"""The losses alignsweep trains and what each one reads: declared once, here.

Everything else reads these: the loss code (`alignsweep.train.losses`, the trainer), the
compose-time checks (`alignsweep.config.algorithms`, `alignsweep.config.resolve`: a job's
`reference_free`, written into its config.yaml as `algo.reference_free`), the worker (whether to
precompute reference log-probs) and the collector (the `reference_free` column of results.csv,
which the findings read). Torch-free, so the dry run can import it.

A new loss: its formula in `alignsweep.train.losses`, its `conf/algo/NAME.yaml`, and its name here
(with the knobs it reads, and in REFERENCE_FREE when its formula never reads pi_ref).
"""

from __future__ import annotations

ALGORITHMS = (
    "dpo", "ipo", "ipo_daa", "slic", "simpo", "alphapo", "rdpo", "cdpo", "robust_dpo", "exo", "nca", "bco",
    "sppo_hard", "apo_zero", "apo_down", "discopop", "dpo_norm", "aot", "aot_unpaired", "orpo", "kto",
)
# the losses whose formula never reads the reference model (no reference log-probs are computed for
# them in training; KL and evaluation still measure against the SFT model): their beta is not a KL strength
REFERENCE_FREE = frozenset({"simpo", "alphapo", "orpo"})
# an algorithm's own knobs (`algo.KEY`, in the algorithms' conf/algo files): any other algorithm refuses them
ALGO_KNOBS = {
    "label_smoothing": ("cdpo", "robust_dpo", "exo", "aot", "aot_unpaired"),
    "discopop_tau": ("discopop",),
    "length_coef": ("rdpo",),
    "length_normalized": ("ipo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
}


def is_reference_free(name: str) -> bool:
    """Whether loss `name` never reads the reference model (REFERENCE_FREE, read at call time)."""
    return name in REFERENCE_FREE


def reads(name: str, knob: str) -> bool:
    """Whether loss `name` reads `algo.KNOB` (ALGO_KNOBS, read at call time)."""
    return name in ALGO_KNOBS.get(knob, ())
