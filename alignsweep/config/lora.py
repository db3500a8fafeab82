"""The combinations `model.lora` cannot run with, refused when a job is composed (a dry run too).

Imports no torch: the checks read the composed config only (`alignsweep.train.lora` applies LoRA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def lora_errors(cfg: Any) -> list[str]:
    """`key: why, and what to type instead` for each setting `model.lora` cannot work with."""
    lora = cfg.model.get("lora")
    if lora is None:
        return []
    errors = []
    targets = lora.target_modules
    if isinstance(targets, str):
        ok = bool(targets.strip())
    else:  # a number or a mapping is no list of names
        ok = isinstance(targets, Sequence) and len(targets) > 0 and all(isinstance(t, str) and t for t in targets)
    if not ok:
        errors.append(
            f"model.lora.target_modules: expected all-linear or a list of module names, got {targets!r}; "
            "e.g. model.lora.target_modules=all-linear or model.lora.target_modules=[q_proj,v_proj]"
        )
    else:
        from alignsweep.config.lora_targets import target_errors

        errors += target_errors(cfg)  # names that match no layer of the model, where its layers are known
    if getattr(cfg.model, "tree_policy", None) is not None:
        errors.append(f"model.lora: model={cfg.model.name} is a Tree MDP policy, not a transformer; remove lora=")
    if cfg.eval.enabled and cfg.eval.sampler == "vllm":
        errors.append(
            "eval.sampler=vllm: the vLLM sampler copies full weights into its engine, not LoRA adapters; "
            "use eval.sampler=transformers (or auto) with model.lora, or model.lora=null"
        )
    return errors


def with_implied_lora(argv: list[str]) -> list[str]:
    """`argv` with `lora=default` added when an override sets a key of `model.lora` (`model.lora.r=8`,
    `model.lora={r:8}`) and none chooses the `lora` group: Hydra cannot set a key inside a null
    node, and a user who sets a LoRA knob asks for LoRA. The group precedes `model` in the defaults
    list, so a model file's own `lora:` block still wins over conf/lora/default.yaml."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in argv[1:] if "=" in a and not a.startswith("-")]
    if "lora" in keys or not any(k.startswith("model.lora.") or k == "model.lora" for k in keys):
        return argv
    setting = [a for a in argv[1:] if a.split("=", 1)[0].lstrip("+~") == "model.lora"]
    if setting and setting[-1].split("=", 1)[1].strip() in ("null", "None", ""):
        return argv  # model.lora=null: full fine-tuning, as without lora=
    return [*argv, "lora=default"]
