"""The SFT policy: trained once per (model, data, SFT settings) and shared by every job of a sweep.

It is both the initial policy and the reference model, as in the paper. The cache folder is named
by a hash of everything that determines it. One job builds it under a file lock while the others
wait; it is written to a temporary folder and renamed into place when complete, so a builder that
crashes leaves nothing another job could mistake for a finished model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
PAIR_ONLY_KEYS = ("n_train", "n_heldout", "n_eval", "length_bias", "label_noise", "label_temperature")


def sft_key(cfg: Any) -> str:
    """Content hash of what determines the SFT model (not the DAA hyperparameters)."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model.pop("resources", None)
    model.pop("per_device_batch", None)
    model.pop("grad_accum", None)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("max_new_tokens", None)
    if data.get("embedded"):
        # The SFT split is drawn first from the task's seed: the sizes and labels of the other
        # splits do not change it, so sweeps over them share one SFT model.
        for key in PAIR_ONLY_KEYS:
            data["embedded"].pop(key, None)
    spec = {"model": model, "data": data, "sft": OmegaConf.to_container(cfg.sft, resolve=True)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ensure_sft(cfg: Any, task: dict, build_base_model: Any, tokenizer: Any, device_kwargs: dict) -> Path:
    """Path of the cached SFT model, building it first if no job has yet (`build_base_model()` is
    called only then, so a cache hit never loads the base weights)."""
    root = Path(cfg.paths.cache_dir) / "sft"
    root.mkdir(parents=True, exist_ok=True)
    key = sft_key(cfg)
    final = root / key
    with FileLock(str(root / f"{key}.lock")):
        if (final / "DONE").exists():
            return final
        tmp = root / f"{key}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("building the SFT model %s", key)
        model = build_base_model()
        if cfg.sft.enabled:
            _train(cfg, task["sft"], model, tokenizer, tmp / "trainer", device_kwargs)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "DONE").write_text(json.dumps({"key": key}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    return final


def _train(cfg: Any, rows: list, model: Any, tokenizer: Any, out: Path, device_kwargs: dict) -> None:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(out),
        num_train_epochs=cfg.sft.epochs,
        learning_rate=cfg.sft.lr,
        per_device_train_batch_size=cfg.sft.batch_size,
        warmup_steps=cfg.sft.warmup_ratio,  # a float in [0, 1) is a fraction of the steps
        lr_scheduler_type="cosine",
        max_length=cfg.data.max_length,
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        disable_tqdm=True,
        seed=cfg.sft.seed,
        completion_only_loss=True,
        **device_kwargs,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
