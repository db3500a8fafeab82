"""Evaluation batch sizes: sized to the device's free memory, halved on out-of-memory.

`eval.batch_size: auto` (the default) sizes each kind of evaluation batch (generation, scoring of
the samples, scoring of the held-out pairs) from the memory free on the models' device when that
work starts, divided by an estimate of what one sequence needs, derived from the model config:

- generation: the KV cache, 2 * layers * kv_heads * head_dim * (prompt + max_new_tokens) *
  bytes per value, plus the prefill activations and the next-token distribution (float64) that
  the sampler draws from;
- scoring: the logits of the whole sequence in the model's dtype, plus the float32 log-softmax of
  the response positions for both models and the temporaries of the exact per-token KL, plus the
  activations of one layer.

On CUDA the free memory is `torch.cuda.mem_get_info()` plus what PyTorch's caching allocator holds
unused, times `CUDA_FRACTION`; on CPU it is the smallest of MemAvailable (/proc/meminfo, or psutil),
the job's cgroup memory limit less its usage, and the address-space limit (RLIMIT_AS) less the
process's size, times `CPU_FRACTION`, and the size is capped at `CPU_CAP` (256, the former fixed
default: on the embedded task a CPU evaluation was still a little faster at 256 than at 64) or at
`CUDA_CAP`. An integer `eval.batch_size` is used as given, as a maximum.

Whatever the starting size, a batch that fails with an allocation failure (CUDA's
OutOfMemoryError, a MemoryError, or the CPU allocator's "can't allocate memory") is retried at
half the size, and that size is remembered as the ceiling of its kind for the rest of the run.
The results do not depend on the size: the sampler seeds each prompt's draws by its index
(`alignsweep.evaluate.evaluator.prompt_seed`), never by its batch.
"""

from __future__ import annotations

import gc
import logging
import re
from pathlib import Path
from typing import Any, Callable, Optional

import torch

log = logging.getLogger("alignsweep.evaluate.evaluator")

CPU_CAP = 256  # prompts per batch on CPU (the former fixed default); memory permitting
CUDA_CAP = 1024
CPU_FRACTION = 0.5  # of the host memory available
CUDA_FRACTION = 0.8  # of the free device memory
_HUGE = 1 << 60  # cgroup v1 reports "no limit" as a number near 2^63


def is_oom(exc: BaseException) -> bool:
    """An allocation failure that a smaller batch may avoid."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    if isinstance(exc, RuntimeError):
        msg = str(exc).lower()
        return "out of memory" in msg or "can't allocate memory" in msg or "cannot allocate memory" in msg
    return False


def _meminfo_available() -> Optional[int]:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2): no limit


def _cgroup_headroom() -> Optional[int]:
    """The job's cgroup memory limit less its usage (SLURM and containers limit memory this way);
    the tightest over the cgroup and its parents, v2 or v1; None without a limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    root = Path("/sys/fs/cgroup")
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2
            base, limit_name, usage_name = root, "memory.max", "memory.current"
        elif "memory" in controllers.split(","):  # v1
            base, limit_name, usage_name = root / "memory", "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup, its parents, the (namespaced) root
            folder = base.joinpath(*parts[:depth])
            limit, usage = _read_int(folder / limit_name), _read_int(folder / usage_name)
            if limit is not None and limit < _HUGE and usage is not None:
                found.append(max(0, limit - usage))
    return min(found) if found else None


def _address_space_headroom() -> Optional[int]:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        size = re.search(r"^VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return max(0, soft - int(size.group(1)) * 1024) if size else None


def host_available_bytes() -> Optional[int]:
    found = [v for v in (_meminfo_available(), _cgroup_headroom(), _address_space_headroom()) if v is not None]
    return min(found) if found else None


def free_bytes(device: torch.device) -> Optional[int]:
    """Memory a batch on `device` may use now, before the safety fraction; None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    if device.type == "cpu":
        return host_available_bytes()
    return None


def _shape(model: Any) -> dict:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    hidden, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {
        "layers": config.num_hidden_layers,
        "hidden": hidden,
        "heads": heads,
        "kv_width": (getattr(config, "num_key_value_heads", None) or heads) * head_dim,
        "inner": getattr(config, "intermediate_size", None) or 4 * hidden,
        "vocab": config.vocab_size,
        "bytes": next(model.parameters()).element_size(),
    }


def _activations(s: dict, length: int) -> int:
    """One layer's activations for one sequence (no grad: layers are not kept), with attention
    scores as eager attention materialises them."""
    return length * (4 * s["hidden"] + s["inner"] + s["heads"] * length) * s["bytes"]


def generation_bytes(model: Any, prompt_len: int, new_tokens: int, *, full_prefill_logits: bool = False) -> int:
    """Memory one sequence needs while `evaluation.sample` generates it."""
    s = _shape(model)
    length = prompt_len + new_tokens
    kv_cache = 2 * s["layers"] * s["kv_width"] * length * s["bytes"]
    kv_cache += kv_cache // s["layers"]  # a layer's cache is copied when a token is appended
    logits = s["vocab"] * (prompt_len if full_prefill_logits else 1) * s["bytes"]
    sampling = 3 * s["vocab"] * 8  # float64 probabilities, their cumulative sum, a temporary
    return kv_cache + _activations(s, prompt_len) + logits + sampling


def scoring_bytes(model: Any, total_len: int, response_len: int) -> int:
    """Memory one sequence needs in `evaluation.sequence_stats` / `sequence_logps`."""
    s = _shape(model)
    logits = s["vocab"] * total_len * s["bytes"]
    # float32 log-probs of the scored positions: policy's and reference's, exp, difference, mask
    scored = s["vocab"] * response_len * 4 * 5
    return logits + scored + _activations(s, total_len)


def estimate_batch_size(device: torch.device, bytes_per_sequence: int) -> Optional[int]:
    """The batch that fits in the memory free on `device`, capped; None if the memory is unknown."""
    free = free_bytes(device)
    if free is None:
        return None
    fraction, cap = (CUDA_FRACTION, CUDA_CAP) if device.type == "cuda" else (CPU_FRACTION, CPU_CAP)
    return max(1, min(cap, int(free * fraction) // max(1, bytes_per_sequence)))


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class BatchSizer:
    """Chooses and remembers the batch size of each kind of evaluation work for one run."""

    def __init__(self, setting: Any = "auto", lockstep: bool = False):
        # lockstep (sharded evaluation): every rank must run the same batches, since each forward
        # pass is a collective: the ranks agree on the smallest size, and an out-of-memory batch
        # is not retried (one rank alone backing off would leave the others waiting)
        self.lockstep = lockstep
        if setting == "auto":
            self.fixed: Optional[int] = None
        elif isinstance(setting, int) and not isinstance(setting, bool) and setting >= 1:
            self.fixed = setting
        else:
            from alignsweep.errors import ConfigError

            raise ConfigError(f"eval.batch_size: expected auto or an integer >= 1, got {setting!r}")
        self.ceiling: dict[str, int] = {}  # kind -> largest size not known to fail
        self.used: dict[str, int] = {}  # kind -> the size its last run ended with
        self.backoffs = 0

    def start_size(self, kind: str, n: int, device: torch.device, bytes_per_sequence: int) -> int:
        size = self.fixed
        if size is None:
            size = estimate_batch_size(device, bytes_per_sequence) or CPU_CAP
        size = max(1, min(size, self.ceiling.get(kind, size), max(n, 1)))
        if self.lockstep:
            from alignsweep.runtime.distributed import global_min

            size = global_min(size)
        return size

    def run(self, kind: str, n: int, work: Callable[[slice], Any], *, device: torch.device,
            bytes_per_sequence: int) -> list:
        """`work(slice)` over 0..n in batches; a batch that runs out of memory is retried at half
        its size, and the smaller size kept for the rest of the run."""
        size = self.start_size(kind, n, device, bytes_per_sequence)
        parts, start = [], 0
        while start < n:
            stop = min(n, start + size)
            try:
                parts.append(work(slice(start, stop)))
            except Exception as exc:
                if not is_oom(exc) or stop - start == 1 or self.lockstep:
                    raise
                message = str(exc).splitlines()[0][:200]
            else:
                start = stop
                continue
            # outside the except block, so the failed batch's tensors (held by the traceback) are freed
            release_memory(device)
            size = max(1, (stop - start) // 2)
            self.ceiling[kind] = size
            self.backoffs += 1
            log.warning("evaluation %s: out of memory at batch size %d (%s); retrying at %d",
                        kind, stop - start, message, size)
        self.used[kind] = size
        return parts

    def info(self) -> dict:
        return {"setting": "auto" if self.fixed is None else self.fixed, **self.used, "oom_backoffs": self.backoffs}
