"""One logging set-up for every entry point.

Under several processes only rank 0 prints INFO; every rank prints WARNING and above, tagged with
its rank, so a failure on rank 5 is never silent and progress lines are never printed eight times.
"""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname).1s %(rank_tag)s%(name)s: %(message)s"


def current_rank() -> int:
    """Global rank from the launcher's environment (deepspeed, torchrun, or 0 for a plain process)."""
    for var in ("RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def current_world_size() -> int:
    for var in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS"):
        if var in os.environ:
            return int(os.environ[var])
    return 1


class _RankFilter(logging.Filter):
    def __init__(self, rank: int, world_size: int):
        super().__init__()
        self.rank = rank
        self.tag = f"[rank {rank}] " if world_size > 1 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank_tag = self.tag
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(level: int = logging.INFO, rank: int | None = None, world_size: int | None = None) -> None:
    """Configure the root logger once per process; calling again re-applies rank and level."""
    rank = current_rank() if rank is None else rank
    world_size = current_world_size() if world_size is None else world_size
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(rank, world_size))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # DeepSpeed attaches its own handler; route it through ours so ranks are filtered the same way.
    for name in ("DeepSpeed", "deepspeed"):
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
