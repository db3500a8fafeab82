"""What one job works on: its data splits, the model SFT starts from, its device settings, and
the cache keys of what jobs of a sweep share (cleaned splits, held-out reference log-probs, step 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf



def load_task(cfg: Any, tokenizer: Any) -> dict:
    """The job's splits (sft, train, heldout, eval) with its bad rows dropped and counted, in the
    layout the model takes (`alignsweep.data.chat`: chat messages or text), and `report`.

    The embedded task is generated; other data is read from `data.path` or the hub
    (`alignsweep.data.pairs`), its training and held-out splits chosen by `data.split` and
    `data.heldout_split`. No prompt is both trained on and held out (`alignsweep.data.heldout`).
    SFT trains on the demonstrations of `data.sft_path` / `data.sft_hub_id`, else on the chosen
    responses of the training pairs (the fallback is said in the report, `sft_data`).
    """
    from alignsweep.data import chat, embedded, pairs
    from alignsweep.data.heldout import assemble

    lengths = pairs.token_lengths(tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    mode = getattr(cfg.data, "chat_template", "never")
    if cfg.data.embedded is not None:
        task = embedded.generate(cfg.data.embedded)
        template = chat.uses_template(mode, False, has_template, cfg.model.name if hasattr(cfg, "model") else "?")
        reports = {}
        for split in ("train", "heldout"):
            rows = chat.render(task[split], template)
            task[split], report = pairs.clean_pairs(rows, lengths=lengths, max_length=cfg.data.max_length)
            pairs.require_enough(report, cfg.data.max_bad_fraction, f"data={cfg.data.name} ({split})")
            reports[split] = report.as_dict()
        task["sft"] = _plain(chat.render(task["sft"], template))
        task["eval"] = chat.render(task["eval"], template)
        task["report"] = reports
        return task
    return assemble(cfg, lengths, has_template)


def _plain(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "prompt_text"} for r in rows]


def device_kwargs(cfg: Any) -> dict:
    import torch

    # model.dtype is the compute dtype: bfloat16/float16 run under autocast over float32 master
    # weights and optimizer state (Trainer's mixed precision; FSDP's MixedPrecision policy)
    if torch.cuda.is_available():
        return {"bf16": cfg.model.dtype == "bfloat16", "fp16": cfg.model.dtype == "float16"}
    extra = {"ddp_backend": "gloo"} if int(os.environ.get("WORLD_SIZE", "1")) > 1 else {}
    return {"use_cpu": True, "bf16": cfg.model.dtype == "bfloat16", "fp16": False, **extra}


def sampler_for(cfg: Any) -> str | None:
    """The evaluation sampler this job uses (None when it does not evaluate); `eval.sampler=vllm`
    where vLLM cannot run is a ConfigError."""
    if not cfg.eval.enabled:
        return None
    from alignsweep.evaluate.vllm_sampler import resolve_sampler  # imports no vLLM

    setting = cfg.eval.sampler
    if setting == "auto" and cfg.model.get("lora") is not None:
        setting = "transformers"  # vLLM takes full weights, not adapters (vllm itself refused at compose)
    return resolve_sampler(setting, world_size=int(os.environ.get("WORLD_SIZE", "1")))


def base_model_and_tokenizer(cfg: Any):
    """A factory of the model SFT starts from, and its tokenizer (built locally for the embedded
    tiny model). The model is only built or loaded when the SFT cache does not have it yet."""
    from alignsweep.data import embedded
    from alignsweep.train import models

    if cfg.model.arch is not None:
        vocab = embedded.vocabulary(cfg.data.embedded.n_words, cfg.data.embedded.n_fillers)
        tokenizer = models.build_word_tokenizer(vocab.tokens)
        return (lambda: models.build_tiny_model(cfg.model.arch, tokenizer, cfg.sft.seed)), tokenizer
    cache = cfg.paths.cache_dir
    tokenizer = models.load_pretrained_tokenizer(cfg.model, cache)
    return (lambda: models.load_pretrained_model(cfg.model, cache)), tokenizer


def policy_and_reference(cfg: Any, sft_dir: Path) -> tuple[Any, Any, Any]:
    """(policy, reference, tokenizer) loaded from the SFT model. Full fine-tuning: the policy in
    float32 (master weights, autocast to model.dtype) and a frozen copy in model.dtype as the
    reference. LoRA (`model.lora`): one copy, the frozen base in model.dtype (it needs no float32
    master weights; TRL adds float32 adapters through peft), and reference None: the reference is
    that model with its adapters disabled (`alignsweep.train.lora.AdaptersDisabled`)."""
    import torch

    from alignsweep.train import models

    if cfg.model.get("lora") is not None:
        policy, tokenizer = models.load_saved(sft_dir, cfg.model.dtype)
        if torch.cuda.is_available():  # the precomputed and held-out reference log-probs run before
            policy.to("cuda")  # training, where a sharded trainer has not placed the model yet
        return policy, None, tokenizer
    policy, tokenizer = models.load_saved(sft_dir, "float32")
    ref, _ = models.load_saved(sft_dir, cfg.model.dtype)
    ref.eval().requires_grad_(False)
    if torch.cuda.is_available():
        ref.to("cuda")
    return policy, ref, tokenizer


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
    if cfg.model.get("lora") is not None and cfg.model.dtype != "float32":
        # the LoRA policy's base is in model.dtype, a fully fine-tuned one in float32 (autocast):
        # in float32 both are the SFT model to the bit and share step 0; otherwise not
        payload["policy_dtype"] = cfg.model.dtype
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return Path(cfg.paths.cache_dir) / "step0" / f"{key}.pt"
