"""From a composed config to the job it describes: resolved hyperparameters, checks, resources.

Everything here is cheap and imports no torch, so a dry run of a 63-job grid, and the launcher's
validation of every job before it starts any, take seconds. A mistake in the config raises
`ConfigError`, which the entry points turn into one clear message and exit code 2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from alignsweep.errors import ConfigError

from alignsweep.config.algorithms import (  # noqa: F401 (re-exported)
    ALGO_KNOBS, ALGORITHMS, is_reference_free, refuse_foreign_knobs,
)
HYPERPARAMETERS = ("beta", "alpha", "gamma", "gamma_beta_ratio")  # top-level keys, defaults in conf/algo
ALGO_DIR = Path(__file__).resolve().parents[2] / "conf" / "algo"
SAMPLERS = ("auto", "transformers", "vllm")  # eval.sampler; whether vllm can run is checked when the job starts
EVAL_AT = ("steps", "sqrt_kl")  # eval.at


@dataclass(frozen=True)
class Job:
    """The resolved, validated hyperparameters of one training job."""

    algo: str
    model: str
    data: str
    beta: float
    alpha: Optional[float]
    gamma: Optional[float]
    kl_budget: Optional[float]
    seed: int
    reference_free: bool
    resources: Mapping[str, Any]
    knobs: Mapping[str, Any] = field(default_factory=dict)  # the algorithm's own knobs (ALGO_KNOBS) and their values
    lora: Optional[str] = None  # `r=16,alpha=32` under LoRA (model.lora), None for full fine-tuning

    def describe(self) -> str:
        """The dry-run line: what would run, and what it would ask the cluster for."""
        res = self.resources
        parts = [
            f"algo={self.algo}",
            f"model={self.model}",
            f"data={self.data}",
            f"beta={self.beta:g}",
            f"alpha={_fmt(self.alpha)}",
            f"gamma={_fmt(self.gamma)}",
            *(f"algo.{k}={v}" for k, v in self.knobs.items()),
            *([f"lora={self.lora}"] if self.lora else []),
            f"kl_budget={_fmt(self.kl_budget)}",
            f"seed={self.seed}",
            f"| gpus={res['gpus']} nodes={res['nodes']} tasks={res['tasks_per_node']} cpus={res['cpus']} "
            f"mem={res['mem_gb']}G time={res['time_min']}min strategy={_strategy(res)}",
        ]
        return " ".join(parts)


def _strategy(res: Mapping[str, Any]) -> str:
    """The strategy, and what it degrades to when the job has a single process (alignsweep.train.strategy)."""
    from alignsweep.train.strategy import planned

    runs = planned(res["strategy"], res["nodes"] * res["tasks_per_node"])
    return res["strategy"] if runs == res["strategy"] else f"{res['strategy']}->{runs}(1 process)"


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:g}"


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def _algo_defaults(name: str) -> dict:
    """The algorithm's own defaults, as its file in conf/algo/ declares them ({} when it is not
    there, e.g. an algorithm defined in another config directory)."""
    path = ALGO_DIR / f"{name}.yaml"
    if not path.exists():
        return {}
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(path))
    return {k: node.get(k) for k in HYPERPARAMETERS}


def _refuse_conflicts(cfg: Any) -> None:
    """`algo.KEY` changed from the algorithm's default AND a different top-level `KEY`: one of the
    two would be silently ignored (the top-level one wins), so neither is guessed."""
    name = cfg.algo.name
    defaults = _algo_defaults(name)
    for key in HYPERPARAMETERS:
        given, inner = cfg.get(key), cfg.algo.get(key)
        if given is None or inner is None or given == inner or key not in defaults or inner == defaults[key]:
            continue
        raise ConfigError(
            f"{key}: algo.{key}={inner!r} and {key}={given!r} are both set (algo={name}); they name the same "
            f"value, set it once: `{key}={given}` (top-level) and remove `algo.{key}=`"
        )
    for where, node in (("", cfg), ("algo.", cfg.algo)):
        if node.get("gamma") is not None and node.get("gamma_beta_ratio") is not None:
            raise ConfigError(
                f"{where}gamma and {where}gamma_beta_ratio are both set ({node.get('gamma')!r} and "
                f"{node.get('gamma_beta_ratio')!r}, algo={name}); set exactly one: gamma (absolute margin) or "
                "gamma_beta_ratio (gamma/beta, SimPO's convention)"
            )


def _has(cfg: Any, *keys: str) -> bool:
    return any(cfg.algo.get(k) is not None for k in keys)


def _refuse_unused(cfg: Any, key: str, who_has_it: str, *algo_keys: str) -> None:
    """An algorithm given a value it has no parameter for (its defaults are null) is refused."""
    if cfg.get(key) is not None and not _has(cfg, *algo_keys):
        preset = _preset_of(cfg, key)
        advice = f"remove `{key}=` from this job" if preset is None else (  # the user never typed it
            f"{preset} sets it: run {preset} with an algorithm that has it ({who_has_it.split(' do')[0]}"
            f"), e.g. `{preset} algo=simpo`, or add `{key}=null`")
        raise ConfigError(
            f"{key}: algo={cfg.algo.name} has no {key.split('_')[0]} parameter ({who_has_it}), got "
            f"{key}={cfg.get(key)!r}; {advice}"
        )


def _preset_of(cfg: Any, key: str) -> Optional[str]:
    """`recipe=NAME` (or `experiment=NAME`) when top-level `key` came from it, not the command line."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra = cfg.get("hydra") if isinstance(cfg, Mapping) else None
    if hydra is None:  # a single run: @hydra.main hands over the config without its hydra node
        if not HydraConfig.initialized():
            return None
        hydra = HydraConfig.get()
    typed = OmegaConf.select(hydra, "overrides.task", default=None) or []
    if any(str(o).lstrip("+~").split("=")[0] == key for o in typed):
        return None
    choices = OmegaConf.select(hydra, "runtime.choices", default=None) or {}
    for group in ("recipe", "experiment"):
        if choices.get(group) not in (None, "null"):
            return f"{group}={choices[group]}"
    return None


def resolve_hyperparameters(cfg: Any) -> dict:
    """The job's beta, alpha and gamma (gamma absolute), from the top-level keys or else the
    algorithm's defaults (`conf/algo/*.yaml`); alpha/gamma None for an algorithm without them.

    gamma comes from whichever of `gamma` (absolute) and `gamma_beta_ratio` (gamma/beta, SimPO's
    and AlphaPO's convention) is set, the top-level ones first: gamma = gamma_beta_ratio * beta.
    Raises ConfigError for a value set twice differently (`algo.beta` and `beta`), both gamma knobs
    set, or a value the algorithm has no use for."""
    _refuse_conflicts(cfg)
    refuse_foreign_knobs(cfg)
    name, algo = cfg.algo.name, cfg.algo
    beta = algo.beta if cfg.beta is None else cfg.beta
    if beta is None or not beta > 0:
        raise ConfigError(f"beta: must be > 0, got {beta!r} (algo={name})")
    _refuse_unused(cfg, "alpha", "only alphapo does", "alpha")
    for key in ("gamma", "gamma_beta_ratio"):
        _refuse_unused(cfg, key, "simpo and alphapo do", "gamma", "gamma_beta_ratio")
    alpha = (algo.alpha if cfg.alpha is None else cfg.alpha) if _has(cfg, "alpha") else None
    gamma = None
    for node in (cfg, algo):
        if node.get("gamma") is not None or node.get("gamma_beta_ratio") is not None:
            ratio = node.get("gamma_beta_ratio")
            gamma = node.get("gamma") if ratio is None else ratio * beta
            if gamma < 0:
                which = "gamma" if ratio is None else "gamma_beta_ratio"
                raise ConfigError(f"{which}: must be >= 0, got {node.get(which)!r}")
            break
    return {
        "beta": float(beta),
        "alpha": None if alpha is None else float(alpha),
        "gamma": None if gamma is None else float(gamma),
    }


def write_resolved(container: dict, values: Mapping[str, Any]) -> dict:
    """`container` (a job's config as plain data) with one value per concept: the resolved beta,
    alpha and gamma both at the top level and as the algorithm's values (gamma absolute, the
    gamma_beta_ratio knob dropped), so config.yaml, results.csv and wandb show only what ran; and
    `algo.reference_free`, the loss's own (`alignsweep.train.loss_registry`), for whoever reads the
    run directory without the code."""
    container = dict(container)
    container["algo"] = dict(container["algo"])
    for node in (container, container["algo"]):
        node.update(values)
        node["gamma_beta_ratio"] = None
    container["algo"]["reference_free"] = is_reference_free(container["algo"]["name"])
    return container


def resolve_job(cfg: Any) -> Job:
    """Resolve `beta`/`alpha`/`gamma` against the algorithm's defaults (`resolve_hyperparameters`)
    and check every value.

    The top-level keys win over the algorithm's defaults. An algorithm given an `alpha` or
    `gamma` it has no use for is refused rather than silently ignored: a sweep over a value that
    changes nothing would train identical jobs and plot them as different ones.
    """
    from alignsweep.config.ranges import range_errors
    from alignsweep.config.unknown_keys import unknown_key_errors

    # keys nothing reads, then values out of range, then combinations of values each in range
    errors = unknown_key_errors(cfg) or range_errors(cfg) or combination_errors(cfg)
    if errors:
        raise ConfigError("; ".join(errors))
    algo = cfg.algo
    name = algo.name
    if name not in ALGORITHMS:
        raise ConfigError(f"algo.name: unknown algorithm {name!r}; expected one of {', '.join(ALGORITHMS)}")
    values = resolve_hyperparameters(cfg)

    if cfg.kl_budget is not None and not cfg.kl_budget > 0:
        raise ConfigError(f"kl_budget: must be > 0 nats or null, got {cfg.kl_budget!r}")
    if cfg.train.checkpoints < 1:
        raise ConfigError(f"train.checkpoints: must be >= 1, got {cfg.train.checkpoints!r}")
    if cfg.eval.kl_estimator not in ("mc", "exact_token"):
        raise ConfigError(f"eval.kl_estimator: expected mc or exact_token, got {cfg.eval.kl_estimator!r}")
    batch_size = cfg.eval.batch_size
    if batch_size != "auto" and not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ConfigError(f"eval.batch_size: expected auto or an integer >= 1, got {batch_size!r}")
    if cfg.eval.at not in EVAL_AT:
        raise ConfigError(f"eval.at: expected steps or sqrt_kl, got {cfg.eval.at!r}; e.g. `eval.at=sqrt_kl`")
    if cfg.eval.at == "sqrt_kl" and getattr(cfg.data, "tree", None) is not None:
        raise ConfigError("eval.at: the Tree MDP toy computes every row exactly, every data.tree.log_every steps; "
                          "use `eval.at=steps` (the default) with data=tree_mdp")
    if cfg.eval.sampler not in SAMPLERS:
        raise ConfigError(f"eval.sampler: expected one of {', '.join(SAMPLERS)}, got {cfg.eval.sampler!r}")
    if not 0 < cfg.eval.vllm_gpu_memory_utilization <= 1:
        raise ConfigError(
            f"eval.vllm_gpu_memory_utilization: must be in (0, 1], got {cfg.eval.vllm_gpu_memory_utilization!r}"
        )
    if cfg.eval.prompts is not None and cfg.eval.prompts < 1:
        raise ConfigError(f"eval.prompts: must be >= 1 or null, got {cfg.eval.prompts!r}")
    embedded = cfg.data.embedded
    if embedded is not None and cfg.eval.prompts is not None and cfg.eval.prompts > embedded.n_eval:
        raise ConfigError(
            f"eval.prompts: {cfg.eval.prompts} evaluation prompts asked for, but data={cfg.data.name} "
            f"has {embedded.n_eval} (data.embedded.n_eval)"
        )
    if getattr(cfg.data, "tree", None) is None and getattr(cfg.model, "tree_policy", None) is None:
        from alignsweep.data.checks import check_data_model

        check_data_model(cfg)  # data.path with embedded data, an embedded model on real data, chat templates
    model = cfg.model
    tree, tree_policy = getattr(cfg.data, "tree", None), getattr(model, "tree_policy", None)
    if tree is not None or tree_policy is not None:
        from alignsweep.toys.checks import check_tree_job  # torch-free

        check_tree_job(cfg, tree)
    else:
        # gold needs the embedded task; llm needs base_url, ... (torch-free checks)
        from alignsweep.evaluate.judges.checks import check_judge

        check_judge(cfg.judge, embedded=embedded is not None, data_name=cfg.data.name)
    if tree_policy is None and model.arch is None and model.hub_id is None and model.path is None:
        raise ConfigError(f"model: {model.name} names no checkpoint; set model.path or model.hub_id")
    if model.path is not None and not os.path.exists(model.path):
        raise ConfigError(
            f"model.path: {model.path} does not exist (model={model.name}); point it at a local "
            "checkpoint folder (config.json and weights)"
        )
    if model.path is not None:
        check_tokenizer_can_pad(model.path)

    resources = {k: _get(model.resources, k) for k in ("gpus", "nodes", "cpus", "mem_gb", "time_min", "strategy")}
    tasks = model.resources.tasks_per_node
    resources["tasks_per_node"] = tasks if tasks is not None else max(1, resources["gpus"])
    for key in ("nodes", "cpus", "mem_gb", "time_min", "tasks_per_node"):
        if resources[key] < 1:
            raise ConfigError(f"model.resources.{key}: must be >= 1, got {resources[key]!r} (model={model.name})")
    if resources["gpus"] < 0:
        raise ConfigError(f"model.resources.gpus: must be >= 0, got {resources['gpus']!r}")
    from alignsweep.train.strategy import check_strategy

    check_strategy(resources["strategy"], model.name)
    return Job(
        algo=name,
        model=model.name,
        data=cfg.data.name,
        beta=values["beta"],
        alpha=values["alpha"],
        gamma=values["gamma"],
        kl_budget=cfg.kl_budget,
        seed=cfg.seed,
        reference_free=is_reference_free(name),
        resources=resources,
        knobs={k: algo.get(k) for k, owners in ALGO_KNOBS.items() if name in owners and algo.get(k) is not None},
        lora=None if model.get("lora") is None else f"r{model.lora.r},alpha{model.lora.alpha:g}",
    )


def combination_errors(cfg: Any) -> list[str]:
    """Values that are each in range but cannot work together."""
    errors = []
    data, prompts = cfg.data, cfg.eval.prompts
    if prompts is not None and data.embedded is None and getattr(data, "tree", None) is None \
            and prompts > data.heldout_size:
        errors.append(f"eval.prompts: {prompts} evaluation prompts asked for, but data.heldout_size is "
                      f"{data.heldout_size} (the evaluation prompts are the held-out pairs' prompts)")
    embedded = data.embedded
    if embedded is not None and not embedded.min_topics <= embedded.max_topics <= embedded.n_words:
        errors.append(f"data.embedded: expected min_topics <= max_topics <= n_words, got {embedded.min_topics}, "
                      f"{embedded.max_topics}, {embedded.n_words}")
    errors += sqrt_kl_target_errors(cfg)
    arch = cfg.model.arch
    if arch is not None and arch.hidden_size % arch.num_heads:
        errors.append(f"model.arch: hidden_size {arch.hidden_size} is not a multiple of num_heads {arch.num_heads}")
    if cfg.judge.max_backoff_s < cfg.judge.backoff_s:
        errors.append(f"judge.max_backoff_s: {cfg.judge.max_backoff_s} is less than judge.backoff_s {cfg.judge.backoff_s}")
    if cfg.model.resources.gpus and cfg.model.resources.tasks_per_node and \
            cfg.model.resources.tasks_per_node > cfg.model.resources.gpus:
        errors.append(f"model.resources.tasks_per_node: {cfg.model.resources.tasks_per_node} processes per node "
                      f"but {cfg.model.resources.gpus} GPU(s): one process per GPU at most")
    project = str(cfg.logger.project)
    if cfg.logger.name == "wandb" and (not 0 < len(project) <= 128 or any(c in project for c in "/\\#?%:")):
        errors.append(f"logger.project: W&B takes 1 to 128 characters without / \\ # ? % :, got {project!r}")
    from alignsweep.config.lora import lora_errors

    return errors + lora_errors(cfg)


def sqrt_kl_target_errors(cfg: Any) -> list[str]:
    """eval.sqrt_kl_targets must increase strictly (each one is crossed after the one before it),
    and eval.at=sqrt_kl needs at least one."""
    targets = [float(t) for t in cfg.eval.sqrt_kl_targets]
    if any(b <= a for a, b in zip(targets, targets[1:])):
        fixed = ",".join(f"{t:g}" for t in sorted(set(targets)))
        return [f"eval.sqrt_kl_targets: must be increasing, got {_targets(targets)}; type them in increasing "
                f"order without repeats: `eval.sqrt_kl_targets=[{fixed}]`"]
    if cfg.eval.at == "sqrt_kl" and not cfg.eval.enabled:
        return ["eval.at: sqrt_kl evaluates where the policy crosses each target, but eval.enabled=false evaluates "
                "nothing; remove `eval.enabled=false` or use `eval.at=steps`"]
    if cfg.eval.at == "sqrt_kl" and not targets:
        return ["eval.sqrt_kl_targets: empty, but eval.at=sqrt_kl evaluates when the policy crosses them; give at "
                "least one, e.g. `eval.sqrt_kl_targets=[0.5,1,1.5]`, or use `eval.at=steps`"]
    return []


def _targets(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def check_tokenizer_can_pad(folder: str) -> None:
    """A local checkpoint's tokenizer must have a pad token, or an EOS token to pad with.

    Read from its JSON files, so a dry run needs no transformers import.
    """
    import json

    found: dict = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except ValueError as exc:
                raise ConfigError(f"model.path: {path} is not valid JSON: {exc}") from None
            found.update({k: data.get(k) for k in ("pad_token", "eos_token") if data.get(k)})
    if not os.path.exists(os.path.join(folder, "tokenizer_config.json")) and not os.path.exists(
        os.path.join(folder, "tokenizer.json")
    ):
        raise ConfigError(f"model.path: {folder} has no tokenizer (tokenizer_config.json / tokenizer.json)")
    if not found:
        raise ConfigError(
            f"model.path: the tokenizer in {folder} has neither a pad_token nor an eos_token, so batches "
            "cannot be padded; add one to its tokenizer_config.json"
        )

