"""The splits of a job on preference data from outside the embedded task: training pairs,
held-out pairs and evaluation prompts disjoint by prompt, and SFT demonstrations.

- Training pairs: `data.split` of the data (`alignsweep.data.files.choose_splits`), cleaned
  (`alignsweep.data.pairs.clean_pairs`: exact duplicates dropped and counted among the rest).
- Held out: `data.heldout_split` (by default the data's own test split) less the pairs whose
  prompt is also a training prompt (counted, `prompt_in_training`); without one, whole prompts
  (every pair of a prompt) drawn from the training split in a seeded order until
  `data.heldout_size` pairs are held out (at most half the pairs). No prompt is in both.
- Evaluation: one row per distinct held-out prompt; the reference response is the
  demonstration for that prompt when there is one (TL;DR's human summary), else the chosen response.
- SFT: the demonstrations of `data.sft_path` / `data.sft_hub_id` (TRL's prompt/completion layout,
  or `messages` whose last turn is the completion), less those of held-out prompts; without them,
  the chosen responses of the training pairs (`report["sft_data"]` says which, or that there is
  no SFT: `sft.enabled=false`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable

from alignsweep.data import chat, pairs
from alignsweep.data.files import choose_splits


def prompt_key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


def _clean(rows: list, columns: tuple, lengths: Callable, template: bool, max_length: int, cfg: Any, where: str):
    good, report = pairs.clean_pairs(rows, columns, dedupe=False)  # duplicates after the length check
    rendered = [{k: v for k, v in r.items() if k != "prompt_text"} for r in chat.render(good, template)]
    fitting, second = pairs.clean_pairs(rendered, lengths=lengths, max_length=max_length)
    for reason in ("too_long", "duplicate"):
        report.drop(reason, second.dropped.get(reason, 0))
    report.kept = len(fitting)
    pairs.require_enough(report, cfg.data.max_bad_fraction, where)
    return fitting, report


def _by_prompt(rows: list[dict], size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): whole prompts, in an order seeded by `seed`, until `size` pairs are out."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(prompt_key(row["prompt"]), []).append(row)
    order = sorted(groups, key=lambda k: hashlib.sha256(f"{seed}|{k}".encode()).hexdigest())
    out: set[str] = set()
    n = 0
    for key in order:
        if n >= size or len(out) + 1 >= len(groups):  # keep at least one prompt for training
            break
        out.add(key)
        n += len(groups[key])
    return ([r for r in rows if prompt_key(r["prompt"]) not in out], [r for r in rows if prompt_key(r["prompt"]) in out])


def _splits(path: Any, hub_id: Any, what: str, name: str) -> dict:
    return pairs.read_splits(path) if path else pairs.hub_splits(hub_id, what, name)


def assemble(cfg: Any, lengths: Callable, has_template: bool) -> dict:
    """The job's {sft, train, heldout, eval, report} (see the module's docstring)."""
    data = cfg.data
    where = f"data.path {data.path}" if data.path else f"data.hub_id {data.hub_id}"
    splits = _splits(data.path, data.hub_id, "data.hub_id", data.name)
    train_name, heldout_name = choose_splits(sorted(splits), data.split, data.heldout_split, where)
    columns = (data.prompt_column, data.chosen_column, data.rejected_column)
    first, _ = pairs.clean_pairs(splits[train_name][:64], columns)
    conversational = bool(first) and isinstance(first[0]["chosen"], list)
    template = chat.uses_template(data.chat_template, conversational, has_template, cfg.model.name)
    train, train_report = _clean(splits[train_name], columns, lengths, template, data.max_length, cfg,
                                 f"data={data.name} ({where}, split {train_name})")
    report = {"splits": {"train": train_name, "heldout": heldout_name or f"{train_name}, by prompt"},
              "train": train_report.as_dict(), "layout": "chat template" if template else "text"}
    if heldout_name:
        heldout, heldout_report = _clean(splits[heldout_name], columns, lengths, template, data.max_length, cfg,
                                         f"data={data.name} ({where}, split {heldout_name})")
        trained = {prompt_key(r["prompt"]) for r in train}
        disjoint = [r for r in heldout if prompt_key(r["prompt"]) not in trained]
        heldout_report.drop("prompt_in_training", len(heldout) - len(disjoint))
        kept_groups, _ = _by_prompt(disjoint, max(0, len(disjoint) - data.heldout_size), cfg.seed)
        heldout = kept_groups if len(disjoint) > data.heldout_size else disjoint
        heldout_report.kept = len(heldout)
        report["heldout"] = heldout_report.as_dict()
    else:
        train, heldout = _by_prompt(train, min(data.heldout_size, len(train) // 2), cfg.seed)
        report["heldout"] = {"pairs": len(heldout), "prompts": len({prompt_key(r["prompt"]) for r in heldout})}
    held = {prompt_key(r["prompt"]) for r in heldout}
    sft, references, report["sft_data"] = _demonstrations(cfg, lengths, template, held)
    if not cfg.sft.enabled:  # demonstrations still give the evaluation its references
        report["sft_data"] = "none (sft.enabled=false: training starts from the model itself)"
    if sft is None:
        sft = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train]
    evaluation, seen = [], set()
    for row in chat.render(heldout, template):
        key = prompt_key(row["prompt"])
        if key not in seen:
            seen.add(key)
            evaluation.append({"prompt": row["prompt"], "prompt_text": row["prompt_text"],
                               "reference": chat.text_of(references.get(key, row["chosen"])).strip()})
    return {"sft": sft, "train": train, "heldout": heldout, "eval": evaluation, "report": report}


def _demonstrations(cfg: Any, lengths: Callable, template: bool, held: set) -> tuple[Any, dict, str]:
    """(SFT rows or None, {prompt key: demonstration} over every demonstration, what SFT trains on)."""
    data = cfg.data
    source = data.sft_path or data.sft_hub_id
    if not source:
        return None, {}, "chosen responses of the training pairs (the data names no SFT demonstrations)"
    what = "data.sft_path" if data.sft_path else "data.sft_hub_id"
    splits = _splits(data.sft_path, data.sft_hub_id, what, data.name)
    name, _ = choose_splits(sorted(splits), None, "none", f"{what} {source}")
    rows, dropped = [], {"unusable": 0, "heldout_prompt": 0, "too_long": 0}
    for row in splits[name]:
        if isinstance(row, dict) and "messages" in row and pairs.is_messages(row["messages"]) and len(row["messages"]) > 1:
            row = {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}
        prompt, completion = (row.get("prompt"), row.get("completion")) if isinstance(row, dict) else (None, None)
        if not (pairs._usable(prompt) and pairs._usable(completion)) or pairs._empty(completion):
            dropped["unusable"] += 1
            continue
        rows.append({"prompt": prompt, "completion": completion})
    rows = [{k: v for k, v in r.items() if k != "prompt_text"} for r in chat.render(rows, template)]
    references = {prompt_key(r["prompt"]): r["completion"] for r in rows}
    kept = [r for r in rows if prompt_key(r["prompt"]) not in held]
    dropped["heldout_prompt"] = len(rows) - len(kept)
    fits = lengths([r["prompt"] for r in kept], [r["completion"] for r in kept]) if kept else []
    sft = [r for r, n in zip(kept, fits) if n <= data.max_length]
    dropped["too_long"] = len(kept) - len(sft)
    if not sft:
        from alignsweep.data.files import DataError

        raise DataError(f"{what}: {source} (split {name}) has no usable prompt/completion demonstrations ({dropped})")
    summary = ", ".join(f"{k} {v}" for k, v in dropped.items() if v)
    return sft, references, f"demonstrations: {len(sft)} of {len(splits[name])} from {what} {source} (split {name})" + (
        f"; dropped: {summary}" if summary else "")
