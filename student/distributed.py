"""Multi-process training: who am I (rank, world size, device), and the few collectives used.

The trainer runs the same way under ``torchrun`` (it reads ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` and initialises the process group: gloo on CPU, NCCL on GPUs), under Ray Train's
TorchTrainer (which initialises the group itself), and as one plain process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(local_rank: int = 0) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup() -> Dist:
    """The process's place in the job; initialises the process group when launched by torchrun."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return Dist(dist.get_rank(), dist.get_world_size(), local, pick_device(local))
    return Dist(device=pick_device())


def wrap(model: nn.Module, ctx: Dist, find_unused: bool) -> nn.Module:
    """DDP around ``model`` when there are several processes (it broadcasts rank 0's weights)."""
    if not ctx.enabled:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def barrier(ctx: Dist) -> None:
    if ctx.enabled:
        dist.barrier()


def sync_buffers(model: nn.Module, ctx: Dist) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics). DDP broadcasts them before each
    forward, so after the last forward each rank holds its own; this makes the ranks equal."""
    if ctx.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def sum_over_ranks(values: list[int], ctx: Dist) -> list[int]:
    """Element-wise sum of an integer list over the ranks (every rank gets the sum)."""
    if not ctx.enabled or not values:
        return list(values)
    total = torch.tensor(values, dtype=torch.int64, device=ctx.device)
    dist.all_reduce(total)
    return [int(v) for v in total.tolist()]


def max_over_ranks(values: np.ndarray, ctx: Dist) -> np.ndarray:
    """Element-wise maximum of a uint8 array over the ranks (bitmaps: OR)."""
    if not ctx.enabled or not values.size:
        return values
    total = torch.from_numpy(np.ascontiguousarray(values, dtype=np.uint8)).to(ctx.device)
    dist.all_reduce(total, op=dist.ReduceOp.MAX)
    return total.cpu().numpy()
