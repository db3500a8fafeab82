"""Preflight: before any job of a sweep starts, each distinct model, tokenizer, dataset and judge
endpoint the jobs need is checked once, so that an unreachable hub or judge fails the launch in
seconds with one message per distinct failure (exit 2) instead of failing every job at start.

What is checked (nothing is downloaded):
- a model or tokenizer from the Hugging Face hub (`model.hub_id`, a reward-model judge's
  `judge.model`): in the local hub cache (`huggingface_hub.try_to_load_from_cache`), else asked of
  the hub (`HfApi.model_info`, short timeout); refused offline (`HF_HUB_OFFLINE`) when not cached;
- a dataset from the hub (`data.hub_id`, `data.sft_hub_id` when SFT reads it): in the hub or
  `datasets` cache, else asked of the hub (`HfApi.dataset_info`);
- an OpenAI-compatible judge (`judge.base_url`): `GET {base_url}/models` answers (httpx, short
  timeout); a refused key (401/403) is a failure too.
Local paths are checked by the job's own compose-time checks (`alignsweep.config.resolve`).
Sweeps (`alignsweep.launch.composer.prepare_jobs`) and single runs (`alignsweep.app.run`) are
checked alike; `preflight=false` skips it. The dry run does not preflight. Imports no torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable

TIMEOUT_S = 10.0  # per hub or judge request


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached(repo_id: str, repo_type: str) -> bool:
    if repo_type == "model":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    snapshots = _hub_cache() / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    if snapshots.is_dir() and any(snapshots.iterdir()):
        return True
    from huggingface_hub import constants

    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
    return (datasets_cache / repo_id.replace("/", "___")).is_dir()


def check_hub(repo_id: str, repo_type: str, what: str, local_key: str) -> str | None:
    """None when `repo_id` is in the local cache or the hub answers for it; else what to do."""
    if _cached(repo_id, repo_type):
        return None
    flag = "" if repo_type == "model" else " --repo-type dataset"
    advice = (f"download it where the hub can be reached (`hf download {repo_id}{flag} --local-dir DIR`), "
              f"copy DIR here and run with `{local_key}=DIR`")
    if _offline():
        return f"{what} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {advice}"
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info if repo_type == "model" else HfApi().dataset_info
        info(repo_id, timeout=TIMEOUT_S)
    except Exception as exc:  # no network, unknown repo, gated repo without a token: each is the user's to fix
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return f"{what} {repo_id!r} is not in the local Hugging Face cache and the hub did not give it ({reason}): {advice}"
    return None


def check_endpoint(base_url: str, api_key_env: str | None) -> str | None:
    """None when the OpenAI-compatible API at `base_url` answers `GET /models`; else why not."""
    import httpx

    key = os.environ.get(api_key_env) if api_key_env else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = base_url.rstrip("/") + "/models"
    try:
        answer = httpx.get(url, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return (f"judge endpoint {base_url!r} does not answer ({type(exc).__name__}: {exc}); start the server "
                f"or set judge.base_url to one this machine reaches")
    if answer.status_code in (401, 403):
        if api_key_env and key is None:
            return (f"judge endpoint {base_url!r} wants a key (HTTP {answer.status_code} for GET /models) and "
                    f"judge.api_key_env={api_key_env} is not set here: export {api_key_env}=KEY")
        return (f"judge endpoint {base_url!r} refused the key (HTTP {answer.status_code} for GET /models); "
                + (f"set {api_key_env} (judge.api_key_env) to a valid key" if api_key_env
                   else "name the variable holding a valid key with judge.api_key_env=VAR"))
    return None


def needs(cfg: Any) -> Iterable[tuple[tuple, Callable[[], str | None]]]:
    """(what, check) for each external thing one job needs; `what` identifies it across jobs."""
    model, data, judge = cfg.model, cfg.data, cfg.judge
    if model.arch is None and model.tree_policy is None and not model.path and model.hub_id:
        if not (model.get("gguf") and _gguf_installed(model.gguf)):
            yield ("model", model.hub_id), lambda: check_hub(
                model.hub_id, "model", f"model={model.name} (model and tokenizer)", "model.path")
    if data.embedded is None and data.tree is None and not data.path and data.hub_id:
        yield ("dataset", data.hub_id), lambda: check_hub(data.hub_id, "dataset", f"data={data.name}", "data.path")
    if cfg.sft.enabled and data.embedded is None and not data.sft_path and data.sft_hub_id:
        yield ("dataset", data.sft_hub_id), lambda: check_hub(
            data.sft_hub_id, "dataset", f"data={data.name} SFT demonstrations", "data.sft_path")
    if cfg.eval.enabled and judge.name == "reward_model" and judge.model and not Path(str(judge.model)).exists():
        yield ("model", judge.model), lambda: check_hub(judge.model, "model", "judge=reward_model", "judge.model")
    if cfg.eval.enabled and judge.name == "llm" and judge.base_url:
        yield ("endpoint", judge.base_url, judge.api_key_env), lambda: check_endpoint(judge.base_url, judge.api_key_env)


def _gguf_installed(spec: str) -> bool:
    """Whether a `model.gguf` (PACKAGE:FILE or a path) is on this machine: then no hub is needed."""
    if ":" in spec and not Path(spec).exists():
        import importlib.util

        package, name = spec.split(":", 1)
        found = importlib.util.find_spec(package)
        return bool(found and found.submodule_search_locations
                    and any((Path(p) / name).exists() for p in found.submodule_search_locations))
    return Path(spec).exists()


def shared_local_copies(configs: Iterable[Any]) -> list[str]:
    """One local copy (`data.path`, `data.sft_path`) given to jobs of different data (another
    `data.name` or hub id, e.g. the two halves of experiment=alphapo_ultrafeedback): refused, as it
    would train every job on the same rows under different names. Checked in dry runs too."""
    users: dict[tuple, set] = {}
    for cfg in configs:
        for key, hub in (("path", "hub_id"), ("sft_path", "sft_hub_id")):
            if cfg.data.get(key):
                users.setdefault((key, str(cfg.data[key])), set()).add((cfg.data.name, cfg.data.get(hub)))
    return [
        f"data.{key}={path} is given to jobs of {len(datas)} different data sets ("
        + ", ".join(f"data={name}" + (f" of {hub}" if hub else "") for name, hub in sorted(datas, key=str))
        + f"): one local copy cannot be each of them; launch each with its own copy (`data.{key}=DIR` per launch, "
        "e.g. one recipe at a time: `hydra.sweeper.params.recipe=NAME`)"
        for (key, path), datas in users.items() if len(datas) > 1
    ]


def preflight(configs: Iterable[Any], counts: bool = True) -> list[str]:
    """One message per distinct failure among everything `configs` (composed jobs) need, each
    thing checked once however many jobs need it, with how many jobs it would have failed
    (`counts`; a single run's messages leave it out)."""
    checks: dict[tuple, Callable[[], str | None]] = {}
    users: dict[tuple, int] = {}
    for cfg in configs:
        for what, check in needs(cfg):
            checks.setdefault(what, check)
            users[what] = users.get(what, 0) + 1
    errors = []
    for what, check in checks.items():
        problem = check()
        if problem:
            errors.append(f"{problem} ({users[what]} job(s) need it)" if counts else problem)
    return errors
