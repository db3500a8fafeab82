"""KTO's data path inside the pairwise trainer (`alignsweep.train.trainer.DAATrainer`).

KTO (Ethayarajh et al. 2024) trains on unpaired examples and needs a reference point z: the batch
estimate of KL(pi || pi_ref) from mismatched (prompt, completion) pairs. TRL's KTOTrainer builds
the mismatched pairs by rotating the completions by one within each run of
`per_device_train_batch_size` consecutive examples, and trains on those runs in order
(`train_sampling_strategy="sequential"`), so that a micro-batch's mismatched completions are its
own completions paired with other prompts.

alignsweep keeps the pairwise data (a pair is its desirable and its undesirable example, as TRL's
`unpair_preference_dataset` splits it) and does the same on pairs: the dataset is cut into chunks
of `per_device_batch` consecutive pairs; pair i's mismatched examples are (prompt_i, y_w) and
(prompt_i, y_l) of the pair before it in its chunk (the chunk's first takes its last), and every
micro-batch is one whole chunk. The chunks are fixed by the data alone, so

- the mismatched pairs, and their reference log-probs, are a deterministic function of the
  tokenised data and the micro-batch size: they are precomputed once and shared across a sweep by
  the same cache as the pairs' own reference log-probs (keyed by their token ids), which a
  z computed from whatever pairs a shuffled batch happened to hold could not be;
- the set of mismatched completions of a micro-batch is exactly its own completions, TRL's
  recommendation ("for best results") that its sequential sampler enforces;
- unlike TRL's sequential order, the order of the chunks is shuffled per epoch, seeded by
  (seed, epoch) like every other algorithm's (exact resume).

Within a chunk the pairs keep the dataset's order: the embedded task draws every pair
independently; file data keep the file's order, so in a file sorted by prompt, related prompts
share a chunk and z is estimated on nearly matched pairs (as in TRL's sequential KTOTrainer).
A last chunk of a single pair takes the pair before it in the dataset.
"""

from __future__ import annotations

from typing import Any

import torch

KL_COLUMNS = ("kl_chosen_ids", "kl_rejected_ids")  # the completions of each pair's mismatched examples
REF_KL_COLUMNS = ("ref_kl_chosen_logps", "ref_kl_rejected_logps")


def kl_partners(size: int, chunk: int) -> list[int]:
    """For each of `size` pairs, the pair whose completions its mismatched examples take: the one
    before it in its chunk of `chunk` consecutive pairs, cyclically (TRL's +1 rotation). A last
    chunk of one pair takes the pair before it (none when `size` is 1: itself). A list of `size`
    pair indices; TRL's KTOTrainer rotates completions by +1 within a batch the same way."""
    partners = []
    for i in range(size):
        start = (i // chunk) * chunk
        width = min(chunk, size - start)
        partners.append(start + (i - start - 1) % width if width > 1 else max(i - 1, 0))
    return partners


def with_kl_completions(dataset: Any, chunk: int) -> Any:
    """The tokenised pairs (prompt_ids, chosen_ids, rejected_ids) with KL_COLUMNS added: the chosen
    and rejected completion ids of each pair's partner (`kl_partners`). Built in Arrow."""
    import pyarrow as pa
    from datasets import Dataset

    from alignsweep.data.shared import arrow_table

    table = arrow_table(dataset)
    partners = pa.array(kl_partners(len(dataset), chunk), type=pa.int64())
    for source, column in zip(("chosen_ids", "rejected_ids"), KL_COLUMNS):
        if column in table.column_names:
            table = table.drop_columns([column])
        table = table.append_column(column, table.column(source).take(partners))
    fmt = dataset.format
    return Dataset(table).with_format(fmt["type"], **fmt["format_kwargs"])


def kl_view(dataset: Any) -> Any:
    """The mismatched pairs as a pairwise dataset: prompt_ids with the KL completions as
    chosen_ids/rejected_ids, so the reference precompute (and its shared cache, keyed by these
    token ids) scores them exactly as it scores the pairs."""
    return dataset.select_columns(["prompt_ids", *KL_COLUMNS]).rename_columns(
        dict(zip(KL_COLUMNS, ("chosen_ids", "rejected_ids")))
    )


class ChunkSampler(torch.utils.data.Sampler):
    """The pairs chunk by chunk (chunks of `chunk` consecutive pairs, in order within), the chunks in
    a random order that depends only on (seed, epoch); a partial last chunk comes last, so every
    micro-batch of `chunk` pairs is one whole chunk. Yields each of the `size` pair indices once per
    epoch (TRL's KTOTrainer `train_sampling_strategy="sequential"`, with the chunks shuffled)."""

    def __init__(self, size: int, chunk: int, seed: int):
        self.size, self.chunk, self.seed, self.epoch = size, chunk, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        full = self.size // self.chunk
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(full, generator=generator).tolist() + ([full] if self.size % self.chunk else [])
        return iter([i for c in order for i in range(c * self.chunk, min((c + 1) * self.chunk, self.size))])

    def __len__(self) -> int:
        return self.size


class KLCollator:
    """TRL's preference collator, applied also to the mismatched pairs: adds `kl_input_ids`,
    `kl_attention_mask`, `kl_completion_mask` (rows [prompt + partner's y_w; prompt + partner's
    y_l]) and, when precomputed, the reference log-probs REF_KL_COLUMNS. For a micro-batch of B pairs
    the kl_ tensors are (2B, T) token ids and masks (T the longest row), the REF_KL_COLUMNS (B,) summed
    log-probs in nats, as TRL's KTOTrainer collates its KL examples."""

    def __init__(self, base: Any):
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.base(examples)
        mismatched = [{"prompt_ids": e["prompt_ids"], "chosen_ids": e[KL_COLUMNS[0]], "rejected_ids": e[KL_COLUMNS[1]]}
                      for e in examples]
        kl = self.base(mismatched)
        for key in ("input_ids", "attention_mask", "completion_mask"):
            out[f"kl_{key}"] = kl[key]
        for column in REF_KL_COLUMNS:
            if column in examples[0]:
                out[column] = torch.tensor([e[column] for e in examples])
        return out
