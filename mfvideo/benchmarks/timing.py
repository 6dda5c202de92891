"""Wall-time measurement shared by the benchmarks. These machines are shared and noisy: the jobs of one comparison
run interleaved, round after round, so that a change of load hits each of them alike, and each keeps its best
round, the least disturbed."""

from __future__ import annotations

import time
from typing import Callable

import torch


def best_seconds(jobs: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                 before: Callable[[str], None] = lambda name: None) -> dict[str, float]:
    """Best wall time of each job over `repeats` interleaved rounds, after one untimed warm-up run each (allocations,
    kernel choices). `before(name)` runs untimed before each run of a job (a model switched to train or eval mode).
    On a GPU the device is synchronised before and after each timed run."""
    for name, job in jobs.items():
        before(name)
        job()
    best = {name: float("inf") for name in jobs}
    for _ in range(repeats):
        for name, job in jobs.items():
            before(name)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            job()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best
