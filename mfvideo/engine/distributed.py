"""Process-group set-up for every way train.py is launched: deepspeed, torchrun, or a plain process."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed(local_rank_arg: int | None = None) -> DistInfo:
    """Join (or create, for a plain process) the default process group.

    The deepspeed and torchrun launchers export RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; the deepspeed launcher
    also passes --local_rank, which wins over LOCAL_RANK. A plain process becomes a world of one so that the
    same DeepSpeed code path runs everywhere. NCCL on GPUs, gloo on CPU.
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            WORLD_SIZE="1",
            LOCAL_RANK="0",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())),
        )
    local_rank = (
        int(os.environ.get("LOCAL_RANK", "0")) if local_rank_arg is None or local_rank_arg < 0 else local_rank_arg
    )
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)
