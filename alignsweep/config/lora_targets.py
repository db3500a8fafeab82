"""`model.lora.target_modules` checked against the model's own layers before anything is queued.

peft refuses target names that match no layer only when the job loads the model (after a queue
wait, once per job of a sweep), and silently ignores a listed name that matches nothing while
another does (a typo trains fewer adapters under the same label). Here each name is matched as
peft matches it (`peft.tuners.tuners_utils.check_target_module_exists`: a listed name matches a
module named exactly so or ending in `.NAME`; a single string other than `all-linear` is a regular
expression matched in full) against the layers with a 2-D weight (linear and embedding layers,
those LoRA can adapt), read without torch:

- the embedded models (`model.arch`): GPT-NeoX's module names (`transformers`' GPTNeoXForCausalLM,
  pinned by a test against the built model);
- a local checkpoint (`model.path`, or `model.hub_id` already in the Hugging Face cache): the
  tensor names and shapes in its safetensors headers (the first 8 bytes give the header's length;
  nothing else is read), with the names transformers renames on loading (HEAD_ALIASES) under both.

Other models (a hub model not yet downloaded, a GGUF file) are checked when the job loads them.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

# GPT-NeoX's layers with a 2-D weight, per decoder layer and outside them (transformers' names)
GPT_NEOX_LAYER = ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
GPT_NEOX_OUTSIDE = ("gpt_neox.embed_in", "lm_head")
# checkpoint names transformers renames when it loads them: GPT-NeoX's (Pythia's) `embed_out` head is
# the module `lm_head` since transformers 5; a checkpoint's header names both, so neither is refused
HEAD_ALIASES = {"embed_out": "lm_head"}


def embedded_modules(num_layers: int) -> list[str]:
    """The modules with a 2-D weight of an embedded model (GPT-NeoX, `alignsweep.train.models.build_tiny_model`)."""
    inner = [f"gpt_neox.layers.{i}.{name}" for i in range(num_layers) for name in GPT_NEOX_LAYER]
    return [GPT_NEOX_OUTSIDE[0], *inner, GPT_NEOX_OUTSIDE[1]]


def safetensors_modules(folder: Path) -> Optional[list[str]]:
    """The modules with a 2-D weight in a checkpoint folder's safetensors files (their headers
    only), or None when it has none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    names = []
    for path in files:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(length))
        names += [k[: -len(".weight")] for k, v in header.items()
                  if k.endswith(".weight") and isinstance(v, dict) and len(v.get("shape", ())) == 2]
    return names + [HEAD_ALIASES[n] for n in names if n in HEAD_ALIASES]


def _hub_folder(repo_id: str) -> Optional[Path]:
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    return Path(config).parent if isinstance(config, str) else None


def known_modules(cfg: Any) -> Optional[list[str]]:
    """The job's model's modules with a 2-D weight, when they can be known without loading it."""
    model = cfg.model
    if model.get("arch") is not None:
        return embedded_modules(int(model.arch.num_layers))
    if model.get("gguf"):
        return None
    folder = Path(model.path) if model.get("path") else (_hub_folder(model.hub_id) if model.get("hub_id") else None)
    return safetensors_modules(folder) if folder is not None and folder.is_dir() else None


def _short(modules: Sequence[str]) -> str:
    seen = dict.fromkeys(m.rsplit(".", 1)[-1] for m in modules)
    return ", ".join(seen)


def target_errors(cfg: Any) -> list[str]:
    """`model.lora.target_modules: ...` for each name (or pattern) that matches none of the model's
    adaptable layers, naming the layers it has; [] when all match or the layers are not known here."""
    targets = cfg.model.lora.target_modules
    if isinstance(targets, str) and targets == "all-linear":
        return []
    modules = known_modules(cfg)
    if not modules:
        return []
    what = f"model={cfg.model.name}'s layers that LoRA can adapt (2-D weights): {_short(modules)}"
    if isinstance(targets, str):
        try:
            found = any(re.fullmatch(targets, m) for m in modules)
        except re.error as exc:
            return [f"model.lora.target_modules: {targets!r} is neither all-linear nor a valid regular expression "
                    f"({exc}); give a list of module names, e.g. model.lora.target_modules=[{_first(modules)}]"]
        if found:
            return []
        return [f"model.lora.target_modules: the pattern {targets!r} (a single string is a regular expression "
                f"matched against full module names, as peft does) matches none of {what}; give a list of names, "
                f"e.g. model.lora.target_modules=[{_first(modules)}], or all-linear"]
    missing = [t for t in targets if not any(m == t or m.endswith(f".{t}") for m in modules)]
    if not missing:
        return []
    verb = "matches" if len(missing) == 1 else "match"
    return [f"model.lora.target_modules: {', '.join(map(str, missing))} {verb} no layer among {what}; e.g. "
            f"model.lora.target_modules=[{_first(modules)}], or all-linear"]


def _first(modules: Sequence[str]) -> str:
    inner = [m for m in modules if m.count(".") > 1] or list(modules)
    return inner[0].rsplit(".", 1)[-1]
