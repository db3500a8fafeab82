"""The few collective decisions a multi-process job needs, on top of torch.distributed.

Every rank trains; rank 0 alone writes (and, unless the model is sharded, alone evaluates: under
FSDP every rank takes part in evaluation forward passes, see alignsweep.train.sharding). Decisions that change the control flow
(stop for the KL budget, stop on a non-finite loss) must be the same on every rank, or the others
wait forever in the next collective: rank 0 decides and broadcasts them. Imports torch lazily.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignsweep.results import rundir


def rank() -> int:
    """This process's rank in a distributed job (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def write_rank_record(run_dir: Path, trainer: Any) -> None:
    """Each rank of a distributed job notes what it trained and a checksum of its final weights
    (RUN_DIR/ranks/RANK.json): equal checksums show the gradients were synchronised. With a
    sharded model (FSDP2: DTensor parameters; DeepSpeed ZeRO-3: partitioned parameters) the
    checksum is of the full weights, gathered on every rank (a collective), and
    `local_numel`/`local_checksum` describe this rank's shard."""
    import json

    import torch

    checksum = local = 0.0
    numel = local_numel = 0
    with torch.no_grad():
        for p in trainer.model.parameters():
            shard = local_shard(p)
            if zero3_partitioned(p):
                import deepspeed

                with deepspeed.zero.GatheredParameters([p]):  # every rank holds the whole tensor inside
                    full_sum, full_numel = float(p.data.double().sum()), p.data.numel()
            else:
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                full_sum, full_numel = float(full.double().sum()), full.numel()
            checksum += full_sum
            local += float(shard.double().sum())
            numel += full_numel
            local_numel += shard.numel()
    record = {
        "rank": rank(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "steps": trainer.state.global_step,
        "micro_batches": len(trainer.step_losses),
        "param_checksum": checksum,
        "numel": numel,
        "local_checksum": local,
        "local_numel": local_numel,
    }
    (run_dir / "ranks").mkdir(exist_ok=True)
    rundir.atomic_write_text(run_dir / "ranks" / f"{rank()}.json", json.dumps(record))


def zero3_partitioned(param: Any) -> bool:
    """Whether `param` is a DeepSpeed ZeRO-3 partitioned parameter: outside its module's forward
    its `data` is empty and this rank's partition lies in `ds_tensor`."""
    return hasattr(param, "ds_tensor")


def local_shard(param: Any) -> Any:
    """This rank's elements of a parameter: FSDP2's local shard of a DTensor, a ZeRO-3 partition
    without its padding (`zero3_local_part`), or the parameter itself when it is not sharded."""
    if zero3_partitioned(param):
        return zero3_local_part(param)
    return param.to_local() if hasattr(param, "to_local") else param


def zero3_local_part(param: Any) -> Any:
    """This rank's elements of a ZeRO-3 parameter (flat): its partition `ds_tensor` without the
    padding the last ranks' partitions carry (DeepSpeed leaves that memory uninitialised)."""
    import torch.distributed as dist

    part = param.ds_tensor
    start = part.numel() * dist.get_rank(group=param.ds_process_group)
    return part.narrow(0, 0, max(0, min(part.numel(), param.ds_numel - start)))


COLLECTIVE_TIMEOUT_S = 2 * 3600


def init_process_group() -> None:
    """Join the job's process group early (from the torch.distributed environment: RANK,
    WORLD_SIZE, MASTER_ADDR/PORT), before any trainer exists: the shared SFT model and reference
    log-probs are built by all ranks together under a lock that rank 0 alone holds, which needs
    collectives first. accelerate then uses this group. On GPUs the group is NCCL for CUDA tensors
    and gloo for the CPU tensors of the decisions below (and FSDP's CPU offload)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from datetime import timedelta

    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        backend = "cuda:nccl,cpu:gloo"
    # Generous: while rank 0 alone judges (an LLM judge can take many minutes) or builds a
    # cache, the other ranks wait in their next collective (NCCL's default would be 10 minutes).
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))


@contextmanager
def rank_zero_lock(path: str | Path):
    """A file lock (between jobs) that rank 0 alone takes: the other ranks wait for rank 0 in the
    collectives inside instead of on the lock, where rank 0 would wait for them forever."""
    if rank() != 0:
        yield
        return
    from filelock import FileLock

    with FileLock(str(path)):
        yield


def barrier() -> None:
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's value of any picklable object, on every rank."""
    if not distributed():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_tokens(tokens: Any) -> Any:
    """Rank 0's sampled tokens on every rank, so that ranks generating in lockstep (sharded
    evaluation) take the same path and stop at the same step whatever their numerics."""
    if not distributed():
        return tokens
    import torch.distributed as dist

    dist.broadcast(tokens, src=0)
    return tokens


def distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree(flag: bool) -> bool:
    """Rank 0's decision, on every rank (stopping must be unanimous or the others hang)."""
    if not distributed():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.broadcast(t, src=0)
    return bool(t.item())


def any_rank(flag: bool) -> bool:
    if not distributed():
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def global_min(value: int) -> int:
    """The smallest of the ranks' values (e.g. a batch size every rank can afford)."""
    if not distributed():
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def global_mean(values: list[float]) -> float | None:
    """Mean over all ranks' values (each rank sees its own share of the batch)."""
    total, count = sum(values), len(values)
    if distributed():
        import torch
        import torch.distributed as dist

        t = torch.tensor([total, float(count)], dtype=torch.float64)
        dist.all_reduce(t)
        total, count = t.tolist()
    return total / count if count else None
