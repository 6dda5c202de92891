"""`tools/test.py`: a trained model over every view of every `data.val` video, metrics written beside it.

Runs as one process, under torchrun or under the deepspeed launcher (one process per device; no DeepSpeed engine is
needed for inference). The weights come from `model.init` and must fit the model entirely.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from mfvideo.common.log import setup_logging
from mfvideo.config import Recipe, recipe_to_yaml, save_recipe
from mfvideo.engine.distributed import DistInfo, init_distributed
from mfvideo.engine.evaluate import evaluate
from mfvideo.engine.trainer import Validation, run_folder_lock, uses_bf16

log = logging.getLogger("mfvideo.test")

TEST_LOCK_FILE = "test.lock"


@dataclass(frozen=True)
class TestParts:
    """What a test runs: `model()`, the trained model with all its weights, and `evaluation(micro_batch_size, info)`,
    the loader of every test view with a factory of its evaluator, built once the process group is up."""

    model: Callable[[], torch.nn.Module]
    evaluation: Callable[[int, DistInfo], Validation]


def run_multiview_test(recipe: Recipe, parts: TestParts, local_rank: int | None = None) -> dict:
    """Metrics of `model.init` on `data.val` with `data.test_clips` × `data.test_crops` views; rank 0 writes
    `metrics.json`, `predictions.jsonl` and `recipe.yaml` to `<train.output_dir>/test/`."""
    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    out_dir = Path(recipe.train.output_dir) / "test"
    with run_folder_lock(out_dir, info, TEST_LOCK_FILE):  # one test at a time writes this folder
        return _test(recipe, parts, info, out_dir)


def _test(recipe: Recipe, parts: TestParts, info: DistInfo, out_dir: Path) -> dict:
    model = parts.model()  # weights that do not fit stop the test before anything is written
    if info.is_main:
        log.info("resolved recipe:\n%s", recipe_to_yaml(recipe))
        save_recipe(recipe, out_dir)
    model.to(info.device)
    loader, new_evaluator = parts.evaluation(recipe.train.micro_batch_size, info)
    log.info(
        "testing %s on %s: %d temporal view(s) × %d crop(s) per video, %d process(es)",
        recipe.model.init,
        recipe.data.val,
        recipe.data.test_clips,
        recipe.data.test_crops,
        info.world_size,
    )
    evaluator = new_evaluator()
    metrics = evaluate(
        model,
        loader,
        evaluator,
        show_progress=info.is_main,
        autocast_dtype=torch.bfloat16 if uses_bf16(recipe) else None,
    )
    if info.is_main:
        evaluator.write(out_dir, metrics)
        log.info(
            "test metrics (%s): %s",
            out_dir / "metrics.json",
            ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()),
        )
    dist.barrier()
    return metrics
