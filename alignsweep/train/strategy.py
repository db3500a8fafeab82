"""Which parallel strategy a job runs with (`model.resources.strategy`), without importing torch:
the configuration layer checks it and the dry run prints it; `alignsweep.train.sharding` applies it.
"""

from __future__ import annotations

import os

from alignsweep.errors import ConfigError

STRATEGIES = ("single", "fsdp", "deepspeed_zero3")
SHARDED = ("fsdp", "deepspeed_zero3")


def check_strategy(strategy: str, model_name: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"model.resources.strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r} (model={model_name})"
        )


def planned(strategy: str, processes: int) -> str:
    """The strategy a job of `processes` processes runs with (a sharding strategy needs two or more)."""
    return strategy if processes > 1 else "single"


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def effective(strategy: str) -> str:
    """The strategy this process's job runs with, from the processes it actually has."""
    return planned(strategy, world_size())


def lockstep_evaluation(strategy: str) -> bool:
    """True when every rank must take part in evaluation forward passes (the model is sharded)."""
    return effective(strategy) in SHARDED


def lora_refused(strategy: str, lora_sft: bool) -> bool:
    """Whether `model.lora` is refused under `strategy` (the one the job runs with): under a sharded
    one, except `deepspeed_zero3` when SFT trains no adapters (`lora_sft`: model.lora.sft with
    sft.enabled; merging adapters trained under ZeRO-3 into the SFT model is not built).
    tests/test_zero3.py runs LoRA under ZeRO-3."""
    return strategy in SHARDED and not (strategy == "deepspeed_zero3" and not lora_sft)
