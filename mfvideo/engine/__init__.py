"""Engine stage: DeepSpeed training loop, schedules, checkpoints and resume."""

from __future__ import annotations

import sys
from typing import Sequence

from mfvideo.config import derive_batch_split, load_recipe_or_exit
from mfvideo.log import current_world_size


def run_training(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/train.py: every recipe check happens here, before any process group or data."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    from mfvideo.data.shardlist import list_shards

    if recipe.model.task != "pretrain":
        print(f"recipe error: {recipe_path}: model.task={recipe.model.task!r}: the engine trains MaskFeat pretraining "
              f"(model.task=pretrain); fine-tuning and detection losses are not part of it yet", file=sys.stderr)
        raise SystemExit(2)
    try:
        derive_batch_split(recipe.train, current_world_size())
    except ValueError as err:
        print(f"recipe error: {recipe_path}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        list_shards(recipe.data.train, recipe.data.train_manifest)
    except (OSError, ValueError) as err:
        print(f"recipe error: {recipe_path}: data.train={recipe.data.train!r}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    from mfvideo.engine.trainer import train

    train(recipe, local_rank)
