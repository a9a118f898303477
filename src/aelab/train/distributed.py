"""torchrun: rank, world size and the collectives the trainer needs (sums and the RBM statistics' mean)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch


def dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) for a single process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group under torchrun (gloo on CPU, NCCL on GPUs); returns (rank, world, device)."""
    rank, world = dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
    return rank, world, device


def all_reduce_sum(t: torch.Tensor, world: int) -> torch.Tensor:
    """Sum over ranks, in place; every rank gets the same bits back. A no-op for one process."""
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def average_across_ranks(world: int) -> Callable[[list[torch.Tensor]], None]:
    """An `allreduce` hook that replaces each tensor by its mean over ranks (RBM pretraining statistics)."""

    def allreduce(tensors: list[torch.Tensor]) -> None:
        for t in tensors:
            all_reduce_sum(t, world).div_(world)

    return allreduce
