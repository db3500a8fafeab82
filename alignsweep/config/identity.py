"""A run's identity: the part of its resolved config that changes its results, and its fingerprint.

Two jobs with the same fingerprint train the same model and measure the same numbers, so a sweep
runs them once, and a run directory holding one fingerprint never receives a job of another:
relaunching (or growing) a sweep matches jobs to run directories by fingerprint, never by job
number, and a single run into a directory of another config is refused, naming the keys that differ.

Left out of the identity (`NOT_IDENTITY`): where files go, logging, how the work is scheduled or
shared, and settings documented not to change results. `model.lora: null` (full fine-tuning) is
left out too, so runs written before LoRA existed keep their fingerprints; a LoRA block enters whole. `beta`, `alpha` and `gamma` enter resolved
(the top-level value, else the algorithm's default), so `beta=0.001`, `beta=1e-3` and an omitted
beta equal to the default are one job. When the checkpoints are evaluated (`eval.at`) enters as what
it uses: `eval.at=steps` (the default) leaves `eval.at` and `eval.sqrt_kl_targets` out (so runs made
before `eval.at` existed keep their fingerprints), `eval.at=sqrt_kl` leaves out `train.checkpoints`
(not used then). Written to RUN_DIR/identity.json by whoever prepares the run.
Imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

IDENTITY = "identity.json"

# Dotted keys (or prefixes ending in ".") that do not change what a job computes.
NOT_IDENTITY = (
    "paths.",  # where the files go
    "logger.",  # experiment tracking
    "dry_run",
    "preflight",
    "hydra.",
    "model.resources.cpus", "model.resources.mem_gb", "model.resources.time_min",  # scheduler requests
    "train.resumable", "train.save_final_model",  # what is saved, not what is trained
    "train.share_ref_logps", "data.share_prepared", "eval.share_step0",  # shared or recomputed: same numbers
    "eval.batch_size", "eval.vllm_gpu_memory_utilization",  # results do not depend on them (schema)
    "judge.concurrency", "judge.max_retries", "judge.backoff_s", "judge.max_backoff_s", "judge.timeout_s",
    "judge.cache", "judge.cache_dir", "judge.api_key_env",  # how the judge is asked, not what it answers
    "algo.beta", "algo.alpha", "algo.gamma",  # defaults: they enter resolved as beta, alpha, gamma
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    if isinstance(node, (list, tuple)):
        return {prefix[:-1]: [_canonical(v) for v in node]}
    return {prefix[:-1]: _canonical(node)}


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        as_float = float(value)
        return int(as_float) if as_float.is_integer() and abs(as_float) < 2**53 else as_float
    return value


def _kept(key: str) -> bool:
    return not any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule in NOT_IDENTITY)


def identity(container: Mapping[str, Any]) -> dict[str, Any]:
    """The flat `{dotted key: value}` of a resolved job config (plain data, as in config.json)
    that determines its results; numbers in one canonical form (1 and 1.0 are equal)."""
    algo = container.get("algo") or {}
    resolved = dict(container)
    for key in ("beta", "alpha", "gamma"):
        resolved[key] = container.get(key) if container.get(key) is not None else algo.get(key)
    unused = ("eval.at", "eval.sqrt_kl_targets") if (container.get("eval") or {}).get("at", "steps") == "steps" \
        else ("train.checkpoints",)
    flat = _flatten(resolved)
    if flat.get("model.lora", "set") is None:  # full fine-tuning: the identity of runs from before LoRA
        del flat["model.lora"]
    return {k: v for k, v in sorted(flat.items()) if _kept(k) and k not in unused}


def fingerprint(ident: Mapping[str, Any]) -> str:
    """16 hex digits of SHA-256 over the identity's canonical JSON."""
    text = json.dumps(dict(ident), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> str:
    """`key: old -> new` for every key whose value differs, the first `limit` of them."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    text = ", ".join(f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys[:limit])
    return text + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def write_identity(run_dir: Path, ident: Mapping[str, Any]) -> None:
    from alignsweep.results.rundir import atomic_write_text

    payload = {"fingerprint": fingerprint(ident), "identity": dict(ident)}
    atomic_write_text(Path(run_dir) / IDENTITY, json.dumps(payload, sort_keys=True, indent=1))


def read_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity recorded in a run directory: identity.json, else computed from its config.json
    or config.yaml (runs written before identities were recorded); None when it holds no config."""
    run_dir = Path(run_dir)
    try:
        return json.loads((run_dir / IDENTITY).read_text())["identity"]
    except (FileNotFoundError, ValueError, KeyError):
        pass
    for name in ("config.json", "config.yaml"):
        path = run_dir / name
        if path.exists():
            import yaml

            try:
                data = json.loads(path.read_text()) if name.endswith(".json") else yaml.safe_load(path.read_text())
            except (ValueError, yaml.YAMLError):
                continue
            if isinstance(data, dict):
                return identity(data)
    return None


def identity_conflict(run_dir: Path, ident: Mapping[str, Any]) -> str | None:
    """Why `run_dir` cannot take the job of identity `ident` (it holds another config), or None."""
    old = read_identity(run_dir)
    if old is None or fingerprint(old) == fingerprint(ident):
        return None
    return (f"{run_dir} holds another config ({differences(old, ident)}); give this job its own directory "
            f"(another hydra.run.dir / hydra.sweep.dir) or remove that one")
