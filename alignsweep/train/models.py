"""Models and tokenizers: built from scratch for the embedded task, or loaded from a hub id or a
local folder for everything else, with an error that says what to do when neither is reachable."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
)

from alignsweep.data import embedded
from alignsweep.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFound(ConfigError):
    pass


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` (specials first), built locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=embedded.UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=embedded.PAD, eos_token=embedded.EOS, unk_token=embedded.UNK
    )
    tok.model_max_length = 1024
    return tok


def build_tiny_model(arch: Any, tokenizer: PreTrainedTokenizerFast, seed: int) -> GPTNeoXForCausalLM:
    """A randomly initialised GPT-NeoX (Pythia architecture) of the given size."""
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_position_embeddings,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return GPTNeoXForCausalLM(config)


def model_source(model_cfg: Any) -> str:
    return model_cfg.path or model_cfg.hub_id


def _loading(model_cfg: Any, load: Any) -> Any:
    """`load(source)`, with a missing or unreachable checkpoint reported as what to do about it."""
    source = model_source(model_cfg)
    try:
        return load(source)
    except (OSError, ValueError) as exc:
        where = "local folder" if model_cfg.path else "Hugging Face hub id"
        raise ModelNotFound(
            f"model={model_cfg.name}: cannot load {source!r} ({where}): {str(exc).splitlines()[0]} "
            f"If this machine cannot reach the hub, download the checkpoint elsewhere (for example "
            f"`huggingface-cli download {model_cfg.hub_id or source} --local-dir DIR`), copy it here and "
            f"run with `model.path=DIR`."
        ) from None


def load_pretrained_tokenizer(model_cfg: Any) -> Any:
    """The tokenizer of `model.path` (preferred) or `model.hub_id`, able to pad."""
    tokenizer = _loading(model_cfg, AutoTokenizer.from_pretrained)
    ensure_pad_token(tokenizer, model_source(model_cfg))
    return tokenizer


def load_pretrained_model(model_cfg: Any) -> Any:
    """The weights of `model.path` (preferred) or `model.hub_id`, in `model.dtype`."""
    return _loading(model_cfg, lambda source: AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[model_cfg.dtype]))


def ensure_pad_token(tokenizer: Any, source: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {source!r} has neither a pad nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token


def load_saved(folder: str | os.PathLike, dtype: str = "float32") -> tuple[Any, Any]:
    """A model and tokenizer this project saved (e.g. the cached SFT model)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype])
    return model, tokenizer
