"""Every numeric knob's declared range (`schema.knob`), checked with pydantic when a job is resolved.

The ranges live once, beside each field of the schema (alignsweep.config.schema); this module walks
the schema, finds each knob's value in a composed config and validates it with a pydantic
TypeAdapter of `Annotated[float, Field(**bounds, allow_inf_nan=False)]`: 0, -1 or inf where they
cannot work are refused before anything is queued (a dry run too), naming the key and its range.
Imports no torch.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Iterator

from alignsweep.config import schema

WORDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def knobs(cls: type = schema.Config, prefix: str = "") -> Iterator[tuple[str, dict, type]]:
    """(dotted key, bounds, the field's type) for every numeric knob under the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _plain(hints[f.name])
        if dataclasses.is_dataclass(kind):
            yield from knobs(kind, f"{prefix}{f.name}.")
        elif "range" in f.metadata:
            yield f"{prefix}{f.name}", f.metadata["range"], kind


def numeric_fields(cls: type = schema.Config, prefix: str = "") -> Iterator[str]:
    """Every int or float field (or list of them) of the schema, declared or not, for the test that all are."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _plain(hints[f.name])
        if dataclasses.is_dataclass(kind):
            yield from numeric_fields(kind, f"{prefix}{f.name}.")
        elif kind in (int, float) or _element(kind) in (int, float):
            yield f"{prefix}{f.name}"


def _element(hint: Any) -> Any:
    """list[X] -> X; None for anything else."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is list else None


def _plain(hint: Any) -> Any:
    """Optional[X] -> X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) is typing.Union and len(args) == 1 else hint


def describe(bounds: dict, kind: type = float) -> str:
    """`> 0`, `>= 0 and <= 1 (finite)`, or `finite` (no bound; NaN and infinity refused); a list
    knob: `a list of numbers each > 0 (finite)`."""
    if _element(kind) is not None:
        return f"a list of numbers each {describe(bounds, _element(kind))}"
    parts = [f"{WORDS[k]} {v:g}" for k, v in bounds.items()]
    if kind is int:
        return "an integer " + " and ".join(parts) if parts else "an integer"
    return " and ".join(parts) + " (finite)" if parts else "finite"


@functools.lru_cache(maxsize=None)
def _adapter(kind: type, items: tuple) -> Any:
    from pydantic import Field, TypeAdapter

    return TypeAdapter(typing.Annotated[kind, Field(strict=False, allow_inf_nan=False, **dict(items))])


def _value(cfg: Any, dotted: str) -> tuple[bool, Any]:
    node = cfg
    for part in dotted.split("."):
        if node is None:
            return False, None
        try:
            node = node[part]
        except Exception:  # a section this config does not have, or a value still missing
            return False, None
    return True, node


def range_errors(cfg: Any) -> list[str]:
    """`key: must be RANGE, got VALUE` for every declared knob of `cfg` outside its range."""
    from pydantic import ValidationError

    errors = []
    for key, bounds, kind in knobs():
        present, value = _value(cfg, key)
        if not present or value is None:
            continue
        element = _element(kind)
        try:
            if element is not None:
                for item in value:
                    _adapter(float if element is float else int, tuple(sorted(bounds.items()))).validate_python(item)
            else:
                _adapter(float if kind is float else int, tuple(sorted(bounds.items()))).validate_python(value)
        except (ValidationError, TypeError):
            errors.append(f"{key}: must be {describe(bounds, kind)}, got {value!r}")
    return errors
