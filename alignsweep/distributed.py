"""The few collective decisions a multi-process job needs, on top of torch.distributed.

Every rank trains; rank 0 alone evaluates and writes. Decisions that change the control flow
(stop for the KL budget, stop on a non-finite loss) must be the same on every rank, or the others
wait forever in the next collective: rank 0 decides and broadcasts them. Imports torch lazily.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alignsweep import rundir


def rank() -> int:
    """This process's rank in a distributed job (0 when alone)."""
    return int(os.environ.get("RANK", "0"))


def write_rank_record(run_dir: Path, trainer: Any) -> None:
    """Each rank of a distributed job notes what it trained and a checksum of its final weights
    (RUN_DIR/ranks/RANK.json): equal checksums show the gradients were synchronised."""
    import json

    import torch

    with torch.no_grad():
        checksum = float(sum(p.double().sum() for p in trainer.model.parameters()))
    record = {
        "rank": rank(),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "steps": trainer.state.global_step,
        "micro_batches": len(trainer.step_losses),
        "param_checksum": checksum,
    }
    (run_dir / "ranks").mkdir(exist_ok=True)
    rundir.atomic_write_text(run_dir / "ranks" / f"{rank()}.json", json.dumps(record))


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
