"""`tools/test.py`: a trained model over every view of every `data.val` video, metrics written beside it.

Runs as one process, under torchrun or under the deepspeed launcher (one process per device; no DeepSpeed engine is
needed for inference). The weights come from `model.init` and must fit the model entirely.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from mfvideo.config import Recipe, recipe_to_yaml, save_recipe
from mfvideo.engine.distributed import init_distributed
from mfvideo.engine.evaluate import evaluate
from mfvideo.engine.trainer import uses_bf16
from mfvideo.log import setup_logging

log = logging.getLogger("mfvideo.test")


def run_multiview_test(recipe: Recipe, local_rank: int | None = None) -> dict:
    """Metrics of `model.init` on `data.val` with `data.test_clips` × `data.test_crops` views; rank 0 writes
    `metrics.json`, `predictions.jsonl` and `recipe.yaml` to `<train.output_dir>/test/`."""
    from mfvideo.tasks import build_model, eval_loader_and_evaluator

    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    out_dir = Path(recipe.train.output_dir) / "test"
    if info.is_main:
        log.info("resolved recipe:\n%s", recipe_to_yaml(recipe))
        save_recipe(recipe, out_dir)
    model = build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size, strict_init=True)
    model.to(info.device)
    loader, new_evaluator = eval_loader_and_evaluator(recipe, recipe.train.micro_batch_size, info.rank, info.world_size,
                                                  recipe.data.test_clips, recipe.data.test_crops)
    log.info("testing %s on %s: %d temporal view(s) × %d crop(s) per video, %d process(es)", recipe.model.init,
             recipe.data.val, recipe.data.test_clips, recipe.data.test_crops, info.world_size)
    evaluator = new_evaluator()
    metrics = evaluate(model, loader, evaluator, show_progress=info.is_main,
                       autocast_dtype=torch.bfloat16 if uses_bf16(recipe) else None)
    if info.is_main:
        evaluator.write(out_dir, metrics)
        log.info("test metrics (%s): %s", out_dir / "metrics.json",
                 ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    dist.barrier()
    return metrics
