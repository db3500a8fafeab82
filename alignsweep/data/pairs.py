"""Preference pairs from outside the embedded task: reading, checking and cleaning them.

A data set is rows with a chosen and a rejected response and, optionally, a prompt (column names
in `data.prompt_column` etc.), in either of TRL's layouts: standard (text) or conversational
(lists of `{"role", "content"}` messages). Without a prompt column the prompt is implicit (the
hh-rlhf layout: whole dialogues) and is extracted as the shared prefix of chosen and rejected by
`trl.data_utils.maybe_extract_prompt`, which also splits the ultrafeedback_binarized layout (a text
prompt beside dialogues that repeat it). It comes from a local file or folder (`data.path`: JSON
lines, JSON (`Dataset.to_json` writes JSON lines), CSV, Parquet, a folder of them, or a
`datasets.save_to_disk` Dataset or DatasetDict folder) or from the hub (`data.hub_id`), with its
named splits (`read_splits`).

Bad rows are not trained on and not hidden: empty responses, chosen identical to rejected,
values that are neither text nor messages, rows with no prompt to extract, exact duplicates and
pairs longer than `data.max_length` tokens are counted, dropped and reported in the run's status;
when more than `data.max_bad_fraction` of the rows are bad the run stops with a message instead of
training on the remainder.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from alignsweep.data.files import DataError, _files, read_json_records, split_of_file


@dataclass
class CleanReport:
    total: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str, rows: int = 1) -> None:
        if rows:
            self.dropped[reason] = self.dropped.get(reason, 0) + rows

    def as_dict(self) -> dict:
        return {"total": self.total, "kept": self.kept, "dropped": dict(sorted(self.dropped.items()))}


def read_local(path: str) -> list[dict]:
    """Every record of the local data (all files and splits, in name order)."""
    return [row for rows in read_splits(path).values() for row in rows]


def read_splits(path: str) -> dict[str, list[dict]]:
    """The local data's records by split name: a DatasetDict folder's splits, a JSON object's
    top-level lists, files named by split (`train_prefs-00000-of-00001.parquet`); else `train`."""
    splits: dict[str, list[dict]] = {}
    for file in _files(Path(path)):
        for name, rows in _read(file).items():
            splits.setdefault(name, []).extend(rows)
    return splits


def hub_splits(hub_id: str, what: str, name: str) -> dict[str, list[dict]]:
    """A hub dataset's rows by split; unreachable: a ConfigError saying how to use a local copy."""
    try:
        from datasets import load_dataset

        loaded = load_dataset(hub_id)
        return {split: list(rows) for split, rows in loaded.items()}
    except Exception as exc:  # no network, no such dataset, no access
        raise DataError(
            f"data={name}: cannot load {what}={hub_id!r} from the hub: {str(exc).splitlines()[0]} "
            f"Download it where the hub is reachable (`hf download {hub_id} --repo-type dataset --local-dir DIR`), "
            f"copy DIR here and run with {'data.path' if what == 'data.hub_id' else 'data.sft_path'}=DIR."
        ) from None


def _read(file: Path) -> dict[str, list]:
    if file.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(file))
        if isinstance(data, DatasetDict):
            return {name: list(rows) for name, rows in data.items()}
        return {"train": list(data)}
    split = split_of_file(file)
    if file.suffix in (".jsonl", ".json"):
        records = read_json_records(file)
        if isinstance(records, dict):  # {"train": [...], "test": [...]}
            return {k: v for k, v in records.items() if isinstance(v, list)}
        return {split: records}
    if file.suffix == ".csv":
        with open(file, newline="", errors="replace") as fh:
            return {split: list(csv.DictReader(fh))}
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {split: pq.read_table(file).to_pylist()}
    raise DataError(f"data.path: {file}: unsupported file type")


def is_messages(value: Any) -> bool:
    """A conversational value: a non-empty list of {"role": str, "content": str} messages."""
    return (isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value))


def _usable(value: Any) -> bool:
    return isinstance(value, str) or is_messages(value)


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return not any(m["content"].strip() for m in value) if isinstance(value, list) else True


def split_prompt(prompt: Any, chosen: Any, rejected: Any) -> Optional[dict]:
    """{prompt, chosen, rejected} in one of TRL's layouts, or None when no prompt can be found.

    `trl.data_utils.maybe_extract_prompt` finds an implicit prompt (no prompt, or a text prompt
    beside dialogues that repeat it); a text prompt beside assistant-only message lists becomes a
    user message; an extracted text prompt that ends inside a word gives that word back to the
    responses (both start with it)."""
    from trl.data_utils import maybe_extract_prompt

    example = {"chosen": chosen, "rejected": rejected}
    if prompt is not None:
        example["prompt"] = prompt
    out = maybe_extract_prompt(example)
    if isinstance(prompt, str) and is_messages(chosen) and not out["prompt"]:
        out = {"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}
    p, c, r = out["prompt"], out["chosen"], out["rejected"]
    if prompt is None and isinstance(p, str) and p and not p[-1].isspace() and c[:1].strip() and r[:1].strip():
        cut = max(p.rfind(" "), p.rfind("\n"))
        if cut > 0:
            p, c, r = p[:cut], p[cut:] + c, p[cut:] + r
    if _empty(p) if isinstance(p, (str, list)) else True:
        return None
    return {"prompt": p, "chosen": c, "rejected": r}


def _key(row: dict) -> str:
    return json.dumps([row["prompt"], row["chosen"], row["rejected"]], sort_keys=True)


def clean_pairs(
    rows: Iterable[Any],
    columns: tuple[Optional[str], str, str] = ("prompt", "chosen", "rejected"),
    lengths: Optional[Callable[[list, list], list[int]]] = None,
    max_length: Optional[int] = None,
    dedupe: bool = True,
) -> tuple[list[dict], CleanReport]:
    """Good rows as {prompt, chosen, rejected} dicts (text or messages, as TRL takes them), and
    what was dropped and why.

    A row is good when it is a mapping whose chosen and rejected columns hold text or chat
    messages (and its prompt column, when it has one), a prompt can be found (`split_prompt`),
    both responses are non-empty (not only whitespace), they differ, the row is not an exact
    duplicate of an earlier one, all rows have one layout (text or messages, as the first good
    row), and (given `lengths`, `alignsweep.data.tokens.pair_lengths(tokenizer)`) both
    prompt+response sequences fit in `max_length` tokens. The lengths are asked for all at once.
    Duplicates are looked for last (`dedupe=False`: not at all), so a copy of a bad row is dropped
    for what is wrong with it.
    """
    p_col, c_col, r_col = columns
    good: list[dict] = []
    seen: set[str] = set()
    report = CleanReport()
    conversational: Optional[bool] = None
    for row in rows:
        report.total += 1
        if not isinstance(row, dict) or "__unreadable__" in row:
            report.drop("unreadable")
            continue
        prompt = row.get(p_col) if p_col else None
        chosen, rejected = row.get(c_col), row.get(r_col)
        if not (_usable(chosen) and _usable(rejected) and (prompt is None or _usable(prompt))):
            report.drop("non_text")
            continue
        if _empty(chosen) or _empty(rejected):
            report.drop("empty_response")
            continue
        if chosen == rejected:
            report.drop("identical")
            continue
        pair = split_prompt(prompt, chosen, rejected)
        if pair is None:
            report.drop("no_prompt")
            continue
        if _empty(pair["chosen"]) or _empty(pair["rejected"]):
            report.drop("empty_response")
            continue
        kind = isinstance(pair["chosen"], list)
        if kind != isinstance(pair["prompt"], list) or kind != isinstance(pair["rejected"], list) or (
            conversational is not None and kind != conversational
        ):
            report.drop("mixed_layout")
            continue
        conversational = kind
        good.append(pair)
    if lengths is not None and max_length is not None and good:
        counts = lengths([r["prompt"] for r in good] * 2, [r["chosen"] for r in good] + [r["rejected"] for r in good])
        n = len(good)
        fits = [max(counts[i], counts[n + i]) <= max_length for i in range(n)]
        report.drop("too_long", fits.count(False))
        good = [r for r, fit in zip(good, fits) if fit]
    # exact duplicates last: a copy of a bad row is dropped as what is wrong with it, not as a duplicate
    unique = []
    for pair in good if dedupe else []:
        key = _key(pair)
        if key in seen:
            report.drop("duplicate")
            continue
        seen.add(key)
        unique.append(pair)
    good = unique if dedupe else good
    report.kept = len(good)
    return good, report


def token_lengths(tokenizer: Any) -> Callable[[list, list], list[int]]:
    """The token counts of prompt+completion sequences as training has them
    (`alignsweep.data.tokens.pair_lengths`)."""
    from alignsweep.data.tokens import pair_lengths

    return pair_lengths(tokenizer)


def require_enough(report: CleanReport, max_bad_fraction: float, where: str) -> None:
    """Stop rather than train on the remainder of mostly bad data."""
    if report.total == 0:
        raise DataError(f"{where}: no rows")
    # exact duplicates are counted but are not bad data: the rows they repeat are trained on
    bad = report.total - report.kept - report.dropped.get("duplicate", 0)
    if report.kept == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items()))
        raise DataError(f"{where}: none of the {report.total} rows is usable ({reasons}); fix the data")
    if bad / report.total > max_bad_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items()))
        raise DataError(
            f"{where}: {bad} of {report.total} rows are unusable ({reasons}), more than "
            f"data.max_bad_fraction={max_bad_fraction:g}; fix the data or raise the threshold"
        )
