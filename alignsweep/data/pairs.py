"""Preference pairs from outside the embedded task: reading, checking and cleaning them.

A data set is rows with a prompt, a chosen and a rejected response (column names in
`data.prompt_column` etc.). It comes from a local file or folder (`data.path`: JSON lines, JSON,
CSV, Parquet, or a `datasets.save_to_disk` folder) or from the hub (`data.hub_id`).

Bad rows are not trained on and not hidden: empty responses, chosen identical to rejected,
non-text values and pairs longer than `data.max_length` tokens are counted, dropped and reported
in the run's status; when more than `data.max_bad_fraction` of the rows are bad the run stops with
a message instead of training on the remainder. Imports no torch.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from alignsweep.data.files import DataError, _files


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
    """Every record of the local data (all files, in name order)."""
    rows: list[dict] = []
    for file in _files(Path(path)):
        rows.extend(_read(file))
    return rows


def _read(file: Path) -> Iterable[dict]:
    if file.is_dir():
        from datasets import load_from_disk

        data = load_from_disk(str(file))
        data = data["train"] if hasattr(data, "keys") and "train" in data else data
        return list(data)
    if file.suffix == ".jsonl":
        out = []
        with open(file, errors="replace") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except ValueError:
                    out.append({"__unreadable__": f"{file}:{number}"})
        return out
    if file.suffix == ".json":
        data = json.loads(file.read_text())
        return data.get("train", []) if isinstance(data, dict) else data
    if file.suffix == ".csv":
        with open(file, newline="", errors="replace") as fh:
            return list(csv.DictReader(fh))
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(file).to_pylist()
    raise DataError(f"data.path: {file}: unsupported file type")


def clean_pairs(
    rows: Iterable[Any],
    columns: tuple[str, str, str] = ("prompt", "chosen", "rejected"),
    lengths: Optional[Callable[[list[str]], list[int]]] = None,
    max_length: Optional[int] = None,
) -> tuple[list[dict], CleanReport]:
    """Good rows as {prompt, chosen, rejected} dicts, and what was dropped and why.

    A row is good when it is a mapping whose three columns hold text, both responses are
    non-empty (not only whitespace), they differ, and (given `lengths`, the token count of each
    of a list of texts, e.g. `token_lengths(tokenizer)`) both prompt+response fit in `max_length`
    tokens. The lengths are asked for all at once: a tokenizer does a batch much faster than
    the same texts one by one.
    """
    p_col, c_col, r_col = columns
    good: list[dict] = []
    report = CleanReport()
    for row in rows:
        report.total += 1
        if not isinstance(row, dict) or "__unreadable__" in row:
            report.drop("unreadable")
            continue
        values = [row.get(p_col), row.get(c_col), row.get(r_col)]
        if not all(isinstance(v, str) for v in values):
            report.drop("non_text")
            continue
        prompt, chosen, rejected = values
        if not chosen.strip() or not rejected.strip():
            report.drop("empty_response")
            continue
        if chosen == rejected:
            report.drop("identical")
            continue
        good.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if lengths is not None and max_length is not None and good:
        counts = lengths([r["prompt"] + r["chosen"] for r in good] + [r["prompt"] + r["rejected"] for r in good])
        n = len(good)
        fits = [max(counts[i], counts[n + i]) <= max_length for i in range(n)]
        report.drop("too_long", fits.count(False))
        good = [r for r, fit in zip(good, fits) if fit]
    report.kept = len(good)
    return good, report


def token_lengths(tokenizer: Any) -> Callable[[list[str]], list[int]]:
    """The token counts of texts as a training sequence has them: the text's tokens plus EOS."""

    def lengths(texts: list[str]) -> list[int]:
        return [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return lengths


def require_enough(report: CleanReport, max_bad_fraction: float, where: str) -> None:
    """Stop rather than train on the remainder of mostly bad data."""
    if report.total == 0:
        raise DataError(f"{where}: no rows")
    bad = report.total - report.kept
    if bad / report.total > max_bad_fraction:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.dropped.items()))
        raise DataError(
            f"{where}: {bad} of {report.total} rows are unusable ({reasons}), more than "
            f"data.max_bad_fraction={max_bad_fraction:g}; fix the data or raise the threshold"
        )
