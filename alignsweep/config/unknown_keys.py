"""Keys no schema declares, refused when a job is resolved (a dry run too).

Hydra answers a misspelt key (`algo.label_smothing=0.1`) with "To append to your config use
+algo.label_smothing=0.1", and the `+` form is then accepted: the key sits in the job's config,
changes its fingerprint and its label in results.csv, and nothing reads it, so a sweep over it
trains the same job under different names. Every key of a composed config must be a field of its
schema (alignsweep.config.schema); one that is not is named, with the closest field. Imports no torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from alignsweep.config import schema
from alignsweep.config.ranges import _plain


def unknown_keys(node: Any, cls: type = schema.Config, prefix: str = "") -> list[tuple[str, list[str]]]:
    """(dotted key, the fields it could have meant) for every key of `node` (a composed config, or a
    part of it) that the dataclass `cls` has no field for, recursing into the nested dataclasses."""
    from omegaconf import DictConfig

    if not isinstance(node, DictConfig):
        return []
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    out = []
    for key in node.keys():
        key = str(key)
        if not prefix and key == "hydra":  # Hydra's own node
            continue
        if key not in fields:
            out.append((f"{prefix}{key}", difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.6)))
            continue
        kind = _plain(hints[key])
        if dataclasses.is_dataclass(kind):
            out += unknown_keys(node._get_node(key), kind, f"{prefix}{key}.")
    return out


def unknown_key_errors(cfg: Any) -> list[str]:
    """`KEY: ...` for each key of the composed config no schema field declares."""
    errors = []
    for key, close in unknown_keys(cfg):
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        hint = f"did you mean {parent}{close[0]}? " if close else ""
        errors.append(f"{key}: no such key, nothing would read it ({hint}a `+KEY=` override adds keys the "
                      f"schema does not have; set an existing key without `+`, see `--cfg job`)")
    return errors
