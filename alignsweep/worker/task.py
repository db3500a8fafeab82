"""What one job works on: its data splits, the model SFT starts from, its device settings, and
the cache keys of what jobs of a sweep share (cleaned splits, held-out reference log-probs, step 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from alignsweep.errors import ConfigError


def load_task(cfg: Any, tokenizer: Any) -> dict:
    """The job's splits (sft, train, heldout, eval) with its bad rows dropped and counted.

    The embedded task is generated; other data is read from `data.path` or the hub. Pairs that
    are empty, identical, not text or longer than `data.max_length` tokens are dropped and
    reported (`report`); mostly bad data stops the job.
    """
    from alignsweep.data import embedded, pairs

    columns = (cfg.data.prompt_column, cfg.data.chosen_column, cfg.data.rejected_column)
    lengths = pairs.token_lengths(tokenizer)

    if cfg.data.embedded is not None:
        task = embedded.generate(cfg.data.embedded)
        reports = {}
        for split in ("train", "heldout"):
            task[split], report = pairs.clean_pairs(task[split], lengths=lengths, max_length=cfg.data.max_length)
            pairs.require_enough(report, cfg.data.max_bad_fraction, f"data={cfg.data.name} ({split})")
            reports[split] = report.as_dict()
        task["report"] = reports
        return task
    where = cfg.data.path or cfg.data.hub_id
    rows = pairs.read_local(cfg.data.path) if cfg.data.path else _hub_rows(cfg.data)
    good, report = pairs.clean_pairs(rows, columns, lengths=lengths, max_length=cfg.data.max_length)
    pairs.require_enough(report, cfg.data.max_bad_fraction, f"data={cfg.data.name} ({where})")
    n_heldout = min(cfg.data.heldout_size, len(good) // 2)
    train, heldout = good[: len(good) - n_heldout], good[len(good) - n_heldout :]
    return {
        "sft": [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train],
        "train": train,
        "heldout": heldout,
        "eval": [{"prompt": r["prompt"], "reference": r["chosen"]} for r in heldout],
        "report": {"all": report.as_dict()},
    }


def _hub_rows(data_cfg: Any) -> list:
    try:
        from datasets import load_dataset

        return list(load_dataset(data_cfg.hub_id, split="train"))
    except Exception as exc:  # no network, no such dataset, no access
        raise ConfigError(
            f"data={data_cfg.name}: cannot load {data_cfg.hub_id!r} from the hub: {str(exc).splitlines()[0]} "
            f"Download it elsewhere (datasets.load_dataset(...).save_to_disk(DIR)), copy it here and run with "
            f"data.path=DIR."
        ) from None


def device_kwargs(cfg: Any) -> dict:
    import torch

    if torch.cuda.is_available():
        return {"bf16": cfg.model.dtype == "bfloat16", "fp16": cfg.model.dtype == "float16"}
    extra = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    return {"use_cpu": True, "bf16": False, "fp16": False, **extra}


def sampler_for(cfg: Any) -> str | None:
    """The evaluation sampler this job uses (None when it does not evaluate); `eval.sampler=vllm`
    where vLLM cannot run is a ConfigError."""
    if not cfg.eval.enabled:
        return None
    from alignsweep.evaluate.vllm_sampler import resolve_sampler  # imports no vLLM

    return resolve_sampler(cfg.eval.sampler, world_size=int(os.environ.get("WORLD_SIZE", "1")))


def base_model_and_tokenizer(cfg: Any):
    """A factory of the model SFT starts from, and its tokenizer (built locally for the embedded
    tiny model). The model is only built or loaded when the SFT cache does not have it yet."""
    from alignsweep.data import embedded
    from alignsweep.train import models

    if cfg.model.arch is not None:
        vocab = embedded.vocabulary(cfg.data.embedded.n_words, cfg.data.embedded.n_fillers)
        tokenizer = models.build_word_tokenizer(vocab.tokens)
        return (lambda: models.build_tiny_model(cfg.model.arch, tokenizer, cfg.sft.seed)), tokenizer
    return (lambda: models.load_pretrained_model(cfg.model)), models.load_pretrained_tokenizer(cfg.model)


def shared_task(cfg: Any, tokenizer: Any) -> tuple[dict, bool | None]:
    """(`load_task`, hit): the cleaned splits, read from the sweep's cache when a job already
    stored them (`data.share_prepared`; hit None when sharing is off)."""
    if not cfg.data.share_prepared:
        return load_task(cfg, tokenizer), None
    from alignsweep.cache.store import load_or_compute
    from alignsweep.data.shared import task_cache_path

    return load_or_compute(task_cache_path(cfg, tokenizer), lambda: load_task(cfg, tokenizer))


def heldout_ref_cache_path(cfg: Any, sft_dir: Path, task: dict) -> Path:
    """Where the reference's log-probs of the held-out pairs are shared (`train.share_ref_logps`)."""
    import hashlib
    import json

    payload = {"sft": _weights_identity(sft_dir), "dtype": cfg.model.dtype, "heldout": task["heldout"]}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "ref_logps" / f"heldout-{key}.pt"


def _weights_identity(sft_dir: Path) -> list:
    """The SFT model's folder and its weights files' sizes and times: a rebuilt model gets a new key."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(sft_dir).glob("*.safetensors"))
    return [str(sft_dir), files]


def step0_cache_path(cfg: Any, job: Any, sft_dir: Path, task: dict, n_eval: int, sampler: str) -> Path:
    """Where step 0's evaluation of this SFT model is shared (`eval.share_step0`): keyed by a hash
    of everything that evaluation depends on, the SFT weights file's size and time included (a
    rebuilt SFT model gets a new key)."""
    import hashlib
    import json

    sft, weights = _weights_identity(sft_dir)
    payload = {
        "sft": sft, "weights": weights, "dtype": cfg.model.dtype, "seed": job.seed, "sampler": sampler,
        "eval": task["eval"][:n_eval], "heldout": task["heldout"], "max_new_tokens": cfg.data.max_new_tokens,
        "temperature": cfg.eval.temperature, "judge": OmegaConf.to_container(cfg.judge, resolve=True),
    }
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "step0" / f"{key}.pt"
