"""Evaluation samples drawn by vLLM (`eval.sampler=vllm`, or `auto` where vLLM and CUDA are there).

Only the samples come from vLLM: each prompt's response is drawn at `eval.temperature` with no
top-k/top-p/min-p truncation and no repetition penalty, ending at the tokenizer's EOS (kept, as
`alignsweep.evaluate.sequences.sample` keeps it) or after `max_new_tokens`, seeded per prompt with the
same `prompt_seed(seed, i)` as the transformers sampler. The log-probabilities of both models, and
so both KL estimators, are then computed by `alignsweep.evaluate.evaluator.sequence_stats` exactly as for
transformers samples: the metric definitions are the same. vLLM's kernels are not transformers',
so the samples are not the same sequences: the two samplers agree in distribution, not draw for
draw (tests/test_vllm_gpu.py compares them on a GPU).

Where the weights come from, and what it costs:
- one engine per run, built at the first evaluation from the SFT checkpoint folder already on
  disk (no extra save), in this process (`distributed_executor_backend="external_launcher"`, as
  TRL's colocate mode does), without a tokenizer (prompts go in as token ids). Building it loads
  the weights and captures CUDA graphs: tens of seconds, once;
- before every evaluation the policy's current weights are copied into the engine on the GPU
  (`model.load_weights`, name by name; no disk, about the time to copy the model once);
- between evaluations the engine sleeps (level 2: its weights and KV cache are freed), so
  training gets the memory back; while it samples it holds `eval.vllm_gpu_memory_utilization` of
  the GPU's memory beside the training state. Use a model dtype vLLM runs (bfloat16/float16).

Multi-process jobs (several ranks) cannot use it: only rank 0 evaluates, and an in-process vLLM
engine would join the job's process group. `auto` then chooses transformers; `vllm` is refused.

vLLM is an optional extra (`pip install 'alignsweep[vllm]'`, vllm 0.31-0.32); this module imports
it only when an engine is built. NOT YET RUN against a real vLLM: the development machines have no
GPU and cannot install it. It is written against the vLLM calls TRL 1.16's colocate mode makes;
tests/test_sampler.py checks alignsweep's side against a stand-in, and tests/test_eval_gpu.py
(marker `gpu`) compares it with the transformers sampler where a GPU and vLLM are there.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
from pathlib import Path
from typing import Any, Optional, Sequence

from alignsweep.errors import ConfigError

log = logging.getLogger("alignsweep.evaluate.evaluator")


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_sampler(setting: str, *, world_size: int = 1) -> str:
    """`eval.sampler` as this job will use it: "transformers" or "vllm". `vllm` where it cannot
    run is a ConfigError naming the key (the job stops before it trains, exit code 2)."""
    import torch

    if setting == "transformers":
        return "transformers"
    cuda = torch.cuda.is_available()
    if setting == "auto":
        return "vllm" if vllm_installed() and cuda and world_size == 1 else "transformers"
    if setting != "vllm":
        raise ConfigError(f"eval.sampler: expected auto, transformers or vllm, got {setting!r}")
    if not vllm_installed():
        raise ConfigError(
            "eval.sampler=vllm: vLLM is not installed in this job's environment (install the extra: "
            "pip install 'alignsweep[vllm]'); use eval.sampler=auto or eval.sampler=transformers"
        )
    if not cuda:
        raise ConfigError(
            "eval.sampler=vllm: this job sees no CUDA GPU, and vLLM samples on one; use eval.sampler=auto "
            "or eval.sampler=transformers, or give the job a GPU (model.resources.gpus)"
        )
    if world_size > 1:
        raise ConfigError(
            f"eval.sampler=vllm: a job of {world_size} processes cannot sample with vLLM (only rank 0 "
            "evaluates); use eval.sampler=auto or transformers, or one process (model.resources.tasks_per_node=1)"
        )
    return "vllm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine_model(llm: Any) -> Any:
    """The torch module inside an in-process engine (the path TRL uses, and the one before it)."""
    worker = llm.llm_engine.model_executor.driver_worker
    for path in (("model_runner", "model"), ("worker", "model_runner", "model")):
        node = worker
        try:
            for name in path:
                node = getattr(node, name)
        except AttributeError:
            continue
        return node
    raise RuntimeError("eval.sampler=vllm: cannot reach the model inside this vLLM version's engine")


def to_response(token_ids: Sequence[int], finish_reason: Optional[str], eos_id: int) -> list[int]:
    """vLLM's output tokens as `evaluation.sample` returns them: ending with EOS when it stopped
    there (vLLM keeps a stop token in `token_ids`; appended if a version drops it)."""
    out = list(token_ids)
    if finish_reason == "stop" and (not out or out[-1] != eos_id):
        out.append(eos_id)
    return out


class VLLMSampler:
    """Samples evaluation responses from the policy's current weights with one vLLM engine."""

    name = "vllm"

    def __init__(self, model_dir: str | os.PathLike, *, dtype: str, gpu_memory_utilization: float = 0.3):
        self.model_dir = Path(model_dir)
        self.dtype = dtype
        self.gpu_memory_utilization = gpu_memory_utilization
        self.llm: Any = None
        self.max_model_len = 0
        self.sleeping = False

    def _build(self, max_model_len: int) -> None:
        # the engine runs in this process: a one-process torch.distributed world of its own
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(key, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        from vllm import LLM

        log.info("building the vLLM engine from %s (max_model_len %d)", self.model_dir, max_model_len)
        self.llm = LLM(
            model=str(self.model_dir),
            dtype=self.dtype,
            seed=0,  # every request has its own seed
            skip_tokenizer_init=True,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_batched_tokens=max(4096, max_model_len),
            enable_sleep_mode=True,
            enable_prefix_caching=False,
            distributed_executor_backend="external_launcher",
            generation_config="vllm",  # vLLM's neutral defaults, not the checkpoint's sampling settings
        )
        self.max_model_len = max_model_len
        self.sleeping = False

    def _load_weights(self, policy: Any) -> None:
        import torch

        if self.sleeping:
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])
        model = _engine_model(self.llm)
        with torch.no_grad():
            for name, param in policy.named_parameters():
                model.load_weights([(name, param.data)])
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"])
            self.sleeping = False
        self.llm.reset_prefix_cache()

    def generate(
        self,
        policy: Any,
        prompt_ids: Sequence[Sequence[int]],
        *,
        seeds: Sequence[int],
        eos_id: int,
        max_new_tokens: int,
        temperature: float,
    ) -> list[list[int]]:
        from vllm import SamplingParams

        needed = max(len(p) for p in prompt_ids) + max_new_tokens
        if self.llm is None:
            self._build(needed)
        elif needed > self.max_model_len:
            raise RuntimeError(f"eval.sampler=vllm: a prompt needs {needed} positions, the engine has {self.max_model_len}")
        self._load_weights(policy)
        params = [
            SamplingParams(
                n=1,
                temperature=temperature,
                top_p=1.0,
                min_p=0.0,
                repetition_penalty=1.0,
                max_tokens=max_new_tokens,
                ignore_eos=True,  # stop at the tokenizer's EOS alone, not at the checkpoint's other stop ids
                stop_token_ids=[eos_id],
                detokenize=False,
                seed=seed,
            )
            for seed in seeds
        ]
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        try:
            outputs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        finally:
            self.llm.sleep(level=2)
            self.sleeping = True
        return [to_response(o.outputs[0].token_ids, o.outputs[0].finish_reason, eos_id) for o in outputs]
