"""Wall-time measurement shared by the benchmarks. These machines are shared and noisy: the jobs of one comparison
run interleaved, round after round, so that a change of load hits each of them alike, and each keeps its best
round, the least disturbed."""

from __future__ import annotations

import time
from typing import Callable

import torch


def best_seconds(
    jobs: dict[str, Callable[[], object]],
    repeats: int,
    device: torch.device,
    before: Callable[[str], None] = lambda name: None,
) -> dict[str, float]:
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


def train_and_test_jobs(
    model: torch.nn.Module, train_batch: dict, test_batch: dict, device: torch.device
) -> dict[str, Callable[[], None]]:
    """The two jobs of a fine-tuning benchmark: "train", forward + the model's loss + backward + an AdamW step on
    `train_batch`; "test", the no-grad forward on `test_batch`. bf16 autocast on a GPU, fp32 on a CPU. Time them
    with `best_seconds(..., before=lambda name: model.train(name == "train"))`."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def train_step() -> None:
        with torch.autocast(**autocast):
            loss = model(train_batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def test_forward() -> None:
        with torch.autocast(**autocast):
            model(test_batch)

    return {"train": train_step, "test": test_forward}
