"""Cheap checks of a `judge` config, for the configuration layer and the dry run: they import
neither torch nor an HTTP client and read no environment variable."""

from __future__ import annotations

import os
from typing import Any, Optional

from alignsweep.errors import ConfigError

JUDGES = ("gold", "reward_model", "llm")


def _opt(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg.key, or `default` where the config has no such key (an older saved config, a namespace)."""
    try:
        value = getattr(cfg, key)
    except (AttributeError, KeyError):
        return default
    return default if value is None and default is not None else value


def check_judge(judge_cfg: Any, *, embedded: bool, data_name: Optional[str] = None) -> None:
    """Cheap checks of a judge config (no imports of torch or HTTP clients, no environment):
    run by `alignsweep.config.resolve.resolve_job`, so a dry run catches them. The llm API key is not
    checked here (a dry run on a laptop needs none); the worker checks it when it builds the judge."""
    name = judge_cfg.name
    if name not in JUDGES:
        raise ConfigError(f"judge.name: {name!r} is not available; expected one of: {', '.join(JUDGES)}")
    if name == "gold" and not embedded:
        raise ConfigError(
            f"judge: `gold` needs the embedded task's programmatic reward, but data={data_name}; "
            "choose judge=reward_model or judge=llm"
        )
    if name == "reward_model":
        model = _opt(judge_cfg, "model")
        if not model:
            raise ConfigError("judge.model: the reward_model judge needs a hub id or a local folder (judge.model=...)")
        if str(model).startswith(("/", "./", "../", "~")) and not os.path.exists(os.path.expanduser(str(model))):
            raise ConfigError(f"judge.model: {model} does not exist; point it at a local reward-model folder")
        if _opt(judge_cfg, "batch_size", 1) < 1:
            raise ConfigError(f"judge.batch_size: must be >= 1, got {judge_cfg.batch_size!r}")
    if name == "llm":
        check_llm(judge_cfg)


def check_llm(judge_cfg: Any) -> None:
    from alignsweep.evaluate.judges.prompts import TEMPLATES

    base_url = _opt(judge_cfg, "base_url")
    if not base_url or not str(base_url).startswith(("http://", "https://")):
        raise ConfigError(
            f"judge.base_url: the llm judge needs the http(s) root of an OpenAI-compatible API "
            f"(e.g. https://api.openai.com/v1), got {base_url!r}"
        )
    prompt = _opt(judge_cfg, "prompt", "auto")
    if prompt != "auto" and prompt not in TEMPLATES:
        raise ConfigError(f"judge.prompt: expected auto, {', '.join(TEMPLATES)}, got {prompt!r}")
    if _opt(judge_cfg, "order", "random") not in ("random", "both"):
        raise ConfigError(f"judge.order: expected random or both, got {judge_cfg.order!r}")
    for key, low in (("concurrency", 1), ("max_retries", 0), ("max_tokens", 1)):
        if _opt(judge_cfg, key, low) < low:
            raise ConfigError(f"judge.{key}: must be >= {low}, got {_opt(judge_cfg, key)!r}")
    if _opt(judge_cfg, "backoff_s", 0) < 0 or _opt(judge_cfg, "timeout_s", 1) <= 0:
        raise ConfigError("judge.backoff_s / judge.timeout_s: must be >= 0 / > 0")
