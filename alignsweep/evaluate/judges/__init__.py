"""Judges decide whether a policy sample beats the reference response for the same prompt.

`compare(prompts, samples, references)` returns one outcome per comparison: 1.0 (sample wins),
0.0 (reference wins), 0.5 (tie), or NaN when the judge gave no usable verdict (an LLM answer with
no readable verdict). The evaluation leaves NaN outcomes out of the win rate and reports their
number as `unparseable`; nothing is guessed. `evaluate(...)` returns the same outcomes with
judge-specific metrics for the checkpoint's metric row (`JudgeResult`).

The judges (`conf/judge/`):

- `gold` (`GoldJudge`): the embedded task's programmatic reward; metric `gold_reward`.
- `reward_model` (`RewardModelJudge`): any Hugging Face sequence-classification reward model
  (`judge.model`: hub id or local folder), batched; metrics `rm_reward`, `rm_reward_reference`.
- `llm` (`LLMJudge`): a pairwise judge over an OpenAI-compatible chat-completions API
  (`judge.base_url`, `judge.model`, key from the environment variable `judge.api_key_env`), with
  randomised presentation order, verdict parsing, retries, a concurrency limit and an on-disk
  cache; metrics `judge_requests`, `judge_retries`, `judge_cache_hits`, `judge_first_preferred`.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from alignsweep.errors import ConfigError
from alignsweep.evaluate.judges.base import Judge, JudgeError, JudgeResult
from alignsweep.evaluate.judges.checks import JUDGES, _opt, check_llm
from alignsweep.evaluate.judges.gold import GoldJudge

__all__ = ["Judge", "JudgeError", "JudgeResult", "GoldJudge", "JUDGES", "build_judge", "llm_cache_dir"]


def llm_cache_dir(judge_cfg: Any, cache_root: Optional[str]) -> Optional[str]:
    """Where the llm judge caches its answers: `judge.cache_dir`, else CACHE_ROOT/judge/llm
    (`paths.cache_dir`); None when `judge.cache` is false."""
    if not _opt(judge_cfg, "cache", True):
        return None
    if _opt(judge_cfg, "cache_dir"):
        return os.path.expanduser(str(judge_cfg.cache_dir))
    if cache_root:
        return os.path.join(os.path.expanduser(str(cache_root)), "judge", "llm")
    return None


def build_judge(judge_cfg: Any, *, data_name: Optional[str] = None, cache_root: Optional[str] = None) -> Judge:
    """The judge a `judge` config describes. `data_name` picks the llm prompt when
    `judge.prompt=auto`; `cache_root` (`paths.cache_dir`) holds the llm cache by default.

    The llm judge's API key is read here, from the environment variable `judge.api_key_env`: a
    missing key fails the job at set-up (ConfigError naming the key), before anything trains.
    """
    name = judge_cfg.name
    if name == "gold":
        return GoldJudge()
    if name == "reward_model":
        from alignsweep.evaluate.judges.reward_model import RewardModelJudge

        if not _opt(judge_cfg, "model"):
            raise ConfigError("judge.model: the reward_model judge needs a hub id or a local folder")
        return RewardModelJudge(
            str(judge_cfg.model),
            batch_size=_opt(judge_cfg, "batch_size", 64),
            dtype=_opt(judge_cfg, "dtype", "float32"),
            max_length=_opt(judge_cfg, "max_length", 2048),
        )
    if name == "llm":
        from alignsweep.evaluate.judges import prompts
        from alignsweep.evaluate.judges.llm import (
            DEFAULT_MODEL,
            LLMJudge,
            api_key_from_env,
        )

        check_llm(judge_cfg)
        return LLMJudge(
            base_url=str(judge_cfg.base_url),
            model=str(_opt(judge_cfg, "model") or DEFAULT_MODEL),
            api_key=api_key_from_env(_opt(judge_cfg, "api_key_env")),
            prompt=prompts.choose(_opt(judge_cfg, "prompt", "auto"), data_name),
            order=_opt(judge_cfg, "order", "random"),
            seed=_opt(judge_cfg, "seed", 0),
            temperature=_opt(judge_cfg, "temperature", 0.0),
            max_tokens=_opt(judge_cfg, "max_tokens", 256),
            concurrency=_opt(judge_cfg, "concurrency", 8),
            max_retries=_opt(judge_cfg, "max_retries", 6),
            backoff_s=_opt(judge_cfg, "backoff_s", 1.0),
            max_backoff_s=_opt(judge_cfg, "max_backoff_s", 60.0),
            timeout_s=_opt(judge_cfg, "timeout_s", 120.0),
            cache_dir=llm_cache_dir(judge_cfg, cache_root),
        )
    raise ConfigError(f"judge.name: {name!r} is not available; expected one of: {', '.join(JUDGES)}")
