"""TRL's DPOTrainer with its loss routed through `alignsweep.train.losses.daa_loss`.

TRL keeps the data pipeline (tokenisation, padding, the fused log-prob head, accelerate,
distributed training); the objective is ours, so every algorithm (reference-based or not) is
exactly the published one and a TRL upgrade that changes a convention cannot change a sweep.
The reference-free algorithms (SimPO, AlphaPO, ORPO) never run the reference model during training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from trl import DPOTrainer

from alignsweep.train import kto
from alignsweep.train.loss_registry import is_reference_free
from alignsweep.train.losses import daa_loss, kto_reference_point, reward_accuracy
from alignsweep.train.sharding import CPUFSDPMixin, gather_lm_head_with_model

REF_PARTS = 16  # the shared reference log-probs are computed in up to this many parts


def _token_ids_digest(digest: Any, dataset: Any, columns: tuple[str, ...]) -> str:
    """`digest` updated with every row's token ids of `columns` (each row's length, then all ids,
    as int64), read from Arrow without a Python object per id; the hex digest."""
    import numpy as np
    import pyarrow.compute as pc

    from alignsweep.data.shared import arrow_table

    table = arrow_table(dataset)
    for column in columns:
        ids = table.column(column)
        for values in (pc.list_value_length(ids), pc.list_flatten(ids)):
            digest.update(np.ascontiguousarray(values.to_numpy(), dtype=np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def load_adapters(model: Any, checkpoint: str) -> None:
    """The LoRA adapters saved in `checkpoint` (peft's adapter_model.safetensors) loaded into
    `model`, strictly: every adapter tensor of the model must be in the file and nothing else."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    expected = set(get_peft_model_state_dict(model))
    if set(saved) != expected:
        raise RuntimeError(
            f"{checkpoint}: the adapters saved ({len(saved)} tensors) are not this model's ({len(expected)}): "
            f"missing {sorted(expected - set(saved))[:3]}, unexpected {sorted(set(saved) - expected)[:3]}"
        )
    result = set_peft_model_state_dict(model, saved)
    if result.unexpected_keys:
        raise RuntimeError(f"{checkpoint}: adapter tensors not loaded: {result.unexpected_keys[:3]}")


class EpochSeededSampler(torch.utils.data.Sampler):
    """A random order that depends only on (seed, epoch), never on the global RNG: a job resumed
    from a checkpoint sees the same batches as one that was never interrupted."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


class DAATrainer(CPUFSDPMixin, DPOTrainer):
    """With `precompute_ref_log_probs=True` the reference log-probs of the training pairs are
    computed before training (`_reference_logps`). `ref_cache_dir`: they are stored there, keyed by
    a hash of the reference weights and the tokenised pairs, so every job of a sweep that trains on
    the same data from the same reference reads them instead of running the reference model
    (TRL's own precompute repeats it per job); without it, this job computes them the same way.
    `prepared_cache_dir`: TRL's tokenised training set is stored there the same way
    (`alignsweep.data.shared`). LoRA (`peft_config`, `ref_model=None`): TRL wraps the model in
    peft adapters and the reference is the same module with its adapters disabled, for the
    precomputed log-probs (keyed by the base weights alone, `_reference_hash`) and the inline ones;
    checkpoints hold the adapters, loaded back strictly (`load_adapters`)."""

    def __init__(
        self, *args: Any, loss_name: str, loss_params: dict[str, Any], ref_cache_dir: str | None = None,
        prepared_cache_dir: str | None = None, clock: Any = None, **kwargs: Any,
    ):
        self.loss_name = loss_name
        self.loss_params = dict(loss_params)
        self.ref_cache_dir = ref_cache_dir
        # what this job computed of the shared results: (parts computed here, parts), None when not
        # shared; (0, n) all read from the sweep's cache; a multi-process job has one part
        self.ref_parts: tuple[int, int] | None = None
        self.prepared_cache_dir = prepared_cache_dir
        self.prepared_parts: tuple[int, int] | None = None
        self.step_losses: list[float] = []  # per micro-batch training loss, read by the evaluation callback
        from alignsweep.runtime.phase_clock import PhaseClock

        self.clock = clock if clock is not None else PhaseClock()  # tokenise, ref_logps: seconds
        if getattr(kwargs.get("args"), "deepspeed", None):  # ZeRO-3: the fused head's weight gathered with the model
            for module in (kwargs.get("model"), kwargs.get("ref_model")):
                if module is not None:
                    gather_lm_head_with_model(module)
        super().__init__(*args, **kwargs)
        if self.loss_name == "kto":  # the mismatched pairs of its reference point (alignsweep.train.kto)
            self.data_collator = kto.KLCollator(self.data_collator)

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        with self.clock("tokenise"):
            prepared = self._prepare_dataset_shared(dataset, processing_class, args, dataset_name)
        if self.loss_name == "kto" and dataset_name == "train":
            prepared = kto.with_kl_completions(prepared, args.per_device_train_batch_size)
        return prepared

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.loss_name == "kto":
            self._signature_columns = [*self._signature_columns, *kto.KL_COLUMNS, *kto.REF_KL_COLUMNS]

    def _prepare_dataset_shared(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
        from datasets import Dataset

        if self.prepared_cache_dir is None or dataset_name != "train" or not isinstance(dataset, Dataset):
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        from alignsweep.data.shared import (
            load_or_prepare,
            load_or_prepare_parts,
            tokenised_cache_path,
        )
        from alignsweep.runtime.distributed import distributed, from_rank_zero

        path = from_rank_zero(str(tokenised_cache_path(self.prepared_cache_dir, dataset, processing_class, args)))

        def prepare(rows: Any) -> Any:
            return super(DAATrainer, self)._prepare_dataset(rows, processing_class, args, dataset_name)

        if distributed():  # rank 0 decides, all ranks prepare together (TRL's main-process-first)
            prepared, hit = load_or_prepare(Path(path), lambda: prepare(dataset))
            self.prepared_parts = (0 if hit else 1, 1)
            return prepared
        # one process: in parts, so that jobs starting together split the tokenisation
        prepared, computed, parts = load_or_prepare_parts(Path(path).with_suffix(""), dataset, prepare)
        self.prepared_parts = (computed, parts)
        return prepared

    def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
        with self.clock("ref_logps"):
            out = self._precompute_ref_logps_shared(dataset, name, batch_size)
            if self.loss_name != "kto" or kto.KL_COLUMNS[0] not in dataset.column_names:
                return out
            # KTO: the mismatched pairs' reference log-probs, by the same code and the same shared
            # cache (keyed by their token ids: deterministic, so every job of a sweep reads them)
            parts = self.ref_parts
            mismatched = self._precompute_ref_logps_shared(kto.kl_view(dataset), name, batch_size)
            if parts is not None and self.ref_parts is not None:
                self.ref_parts = (parts[0] + self.ref_parts[0], parts[1] + self.ref_parts[1])
            from alignsweep.data.shared import arrow_table

            table = arrow_table(mismatched)  # a column read through datasets' numpy format took 0.75 s
            values = {new: torch.from_numpy(table.column(old).to_numpy()) for new, old in zip(
                kto.REF_KL_COLUMNS, ("ref_chosen_logps", "ref_rejected_logps"))}
            return self._with_ref_columns(out, values)

    def _precompute_ref_logps_shared(self, dataset: Any, name: str, batch_size: int) -> Any:
        if self.ref_cache_dir is None:  # this job's own, computed exactly as the shared ones
            return self._with_ref_columns(dataset, self._reference_logps(dataset, batch_size))
        import hashlib

        from alignsweep.cache.store import load_or_compute, load_or_compute_row_parts
        from alignsweep.runtime.distributed import distributed, from_rank_zero

        digest = hashlib.sha256(f"{self._reference_hash()}|{self.args.max_length}|{self.args.truncation_mode}".encode())
        key = from_rank_zero(_token_ids_digest(digest, dataset, ("prompt_ids", "chosen_ids", "rejected_ids"))[:20])
        if distributed():
            # multi-process: rank 0 alone locks and decides; on a miss all ranks compute (collectives)
            saved, hit = load_or_compute(
                Path(self.ref_cache_dir) / f"{key}.pt", lambda: self._reference_logps(dataset, batch_size)
            )
            self.ref_parts = (0 if hit else 1, 1)
            return self._with_ref_columns(dataset, saved)
        # one process: in parts of whole batches, so that jobs starting together split the work
        # (each part's batches are exactly the unshared loop's: the same numbers either way)
        per_part = max(1, math.ceil(math.ceil(len(dataset) / batch_size) / REF_PARTS))  # whole batches
        parts, computed = load_or_compute_row_parts(
            Path(self.ref_cache_dir) / key, len(dataset), per_part * batch_size,
            lambda rows: self._reference_logps(dataset.select(rows), batch_size),
        )
        self.ref_parts = (computed, len(parts))
        return self._with_ref_columns(dataset, {k: torch.cat([p[k] for p in parts]) for k in parts[0]})

    def _reference_hash(self) -> str:
        """The reference weights' hash (TRL's `hash_module`). Under LoRA the reference is the base
        with its adapters disabled: its hash leaves the adapters out (their random initialisation
        differs between jobs, the reference does not), and equals the plain model's, so LoRA and
        full fine-tuning jobs that share an SFT model share its reference log-probs."""
        from alignsweep.train.lora import base_state_dict, is_peft, state_hash

        if self.ref_model is None and is_peft(self.model):
            return state_hash(base_state_dict(self.model))
        return self._precompute_model_hash

    @staticmethod
    def _with_ref_columns(dataset: Any, values: dict[str, torch.Tensor]) -> Any:
        """`dataset` with the reference log-prob columns set to `values` (float64, as TRL's own
        precompute stores them), built in Arrow: `Dataset.add_column` of a Python list pickles it
        to fingerprint it, ~0.2 s per column on 4k pairs, in every job."""
        import pyarrow as pa
        from datasets import Dataset, Value

        from alignsweep.data.shared import arrow_table

        table = arrow_table(dataset)
        features = dataset.features.copy()
        for column, column_values in values.items():
            if column in table.column_names:
                table = table.drop_columns([column])
            table = table.append_column(column, pa.array(column_values.double().numpy()))
            features[column] = Value("float64")
        info = dataset.info.copy()
        info.features = features
        fmt = dataset.format  # its type, over every column (the new ones included)
        return Dataset(table, info=info).with_format(fmt["type"], **fmt["format_kwargs"])

    def _reference_logps(self, dataset: Any, batch_size: int) -> dict[str, torch.Tensor]:
        """TRL's precompute loop (each rank scores its share of the batches, gathered in order),
        kept in memory: TRL passes the result between ranks through a datasets cache file, which
        for an in-memory dataset lies in a temporary folder of each process's own."""
        loader = self.accelerator.prepare(
            torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        )
        model = self.ref_model or self.model
        if self.ref_model is None and self.is_deepspeed_enabled:
            # LoRA under ZeRO-3: the policy is not yet in an engine (training makes one); as TRL's own
            # precompute, an inference engine partitions and gathers it (built once, reused)
            from trl.models import prepare_deepspeed

            if getattr(self, "_precompute_engine", None) is None:
                self._precompute_engine = prepare_deepspeed(self.model, self.accelerator)
            model = self._precompute_engine
        chosen, rejected = [], []
        for batch in loader:
            c, r = self.compute_ref_log_probs(model, batch)
            c, r = self.accelerator.gather_for_metrics((c, r))
            chosen.append(c.cpu())
            rejected.append(r.cpu())
        return {"ref_chosen_logps": torch.cat(chosen), "ref_rejected_logps": torch.cat(rejected)}

    def train(self, *args: Any, **kwargs: Any) -> Any:
        engine = getattr(self, "_precompute_engine", None)
        if engine is not None:  # LoRA under ZeRO-3: the reference passes' engine leaves before the
            engine.destroy()  # training engine comes (two sets of ZeRO-3 hooks on one module clash)
            self._precompute_engine = None
        return super().train(*args, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load a checkpoint's weights through `from_pretrained`, strictly.

        Trainer's own loader calls `load_state_dict(..., strict=False)` on the raw file, and
        transformers 5 saves some weights under legacy names (GPT-NeoX's `lm_head` as `embed_out`),
        so a resumed run silently kept its starting output layer. Loading through the model class
        applies the same renaming as saving, and strict loading makes any other mismatch loud.
        """
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        model = self.model if model is None else model
        from alignsweep.train.lora import is_peft

        if is_peft(model):  # LoRA: the checkpoint holds the adapters only (the base is the SFT model)
            return load_adapters(model, resume_from_checkpoint)
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict(), strict=True)
        del saved

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.loss_name == "kto":  # whole chunks: a micro-batch's mismatched pairs are its own
            return kto.ChunkSampler(len(dataset), self.args.per_device_train_batch_size, seed)
        return EpochSeededSampler(len(dataset), seed)

    def sequence_logps(self, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs and completion lengths of a [chosen; rejected] batch."""
        model_kwargs = {k: v for k, v in inputs.items() if k != "completion_mask" and not k.startswith(("ref_", "kl_"))}
        model_kwargs["use_cache"] = False
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        shift_mask = completion_mask[..., 1:]
        per_token = outputs.log_probs[:, -shift_mask.size(1) :]
        return (per_token * shift_mask).sum(dim=1), shift_mask.sum(dim=1)

    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool):
        mode = "train" if self.model.training else "eval"
        logps, lengths = self.sequence_logps(model, inputs)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        chosen_lengths, rejected_lengths = lengths.chunk(2, dim=0)
        ref_chosen = ref_rejected = None
        if not is_reference_free(self.loss_name):
            if self.precompute_ref_logps:
                ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
            else:
                with torch.no_grad():
                    ref_logps, _ = self.sequence_logps(self.reference(model), inputs)
                ref_chosen, ref_rejected = ref_logps.chunk(2, dim=0)
        extra = {"kl_reference_point": self._kto_reference_point(model, inputs)} if self.loss_name == "kto" else {}
        losses, chosen_rewards, rejected_rewards = daa_loss(
            self.loss_name,
            policy_chosen_logps=chosen_logps,
            policy_rejected_logps=rejected_logps,
            ref_chosen_logps=ref_chosen,
            ref_rejected_logps=ref_rejected,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
            **self.loss_params,
            **extra,
        )
        loss = losses.mean()
        if mode == "train":
            self.step_losses.append(loss.item())
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(gather(chosen_rewards.detach()).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards.detach()).mean().item())
        metrics["rewards/accuracies"].append(gather(reward_accuracy(chosen_rewards, rejected_rewards).float()).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        if extra:
            metrics["kto/reference_point"].append(extra["kl_reference_point"].item())
        if return_outputs:
            return loss, {}
        return loss

    def reference(self, model: Any) -> Any:
        """pi_ref for log-probs computed during training: the reference model, or under LoRA (no
        second copy) the policy's own module with its adapters disabled."""
        if self.ref_model is not None:
            return self.ref_model
        from alignsweep.train.lora import AdaptersDisabled

        return AdaptersDisabled(self.accelerator.unwrap_model(model))

    def _kto_reference_point(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        """KTO's z on this micro-batch's mismatched pairs (`alignsweep.train.kto`): policy log-probs
        without gradient (z is detached), reference log-probs precomputed or from the reference."""
        mismatched = {k[len("kl_"):]: v for k, v in inputs.items() if k.startswith("kl_")}
        with torch.no_grad():
            policy, _ = self.sequence_logps(model, mismatched)
            if self.precompute_ref_logps:
                ref = torch.cat([inputs[column] for column in kto.REF_KL_COLUMNS])
            else:
                ref, _ = self.sequence_logps(self.reference(model), mismatched)
        return kto_reference_point(policy, ref.to(policy.dtype), gather=self.accelerator.gather_for_metrics)
