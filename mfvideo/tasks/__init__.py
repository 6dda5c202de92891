"""The tasks mfvideo trains and tests, each one slice (`mfvideo.tasks.task.Task`) registered here once, and what is
built from a recipe through its task: the model, the training loader, the evaluation loader with its evaluators.

`TASKS` is also where the recipe's allowed `model.task` values come from. Adding a task means adding its slice module
(model factory, batching, evaluator, rules) and one entry here; docs/layout.md lists what else it may touch.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data.loader import StreamLoader, build_test_loader, build_train_loader, read_policy
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.models.checkpoint import load_pretrained
from mfvideo.tasks import classify, detect, pretrain
from mfvideo.tasks.common import Views
from mfvideo.tasks.task import EvaluatorFactory, Task

TASKS: dict[str, Task] = {task.name: task for task in (pretrain.TASK, classify.TASK, detect.TASK)}


def task_of(recipe: Recipe) -> Task:
    return TASKS[recipe.model.task]


def build_model(model_cfg: ModelConfig, num_frames: int, crop_size: int, *, strict_init: bool = False) -> nn.Module:
    """The model of `model_cfg.task` for clips of num_frames × crop_size², with weights from `model_cfg.init` if set.

    Every model has forward(batch) -> {"loss", ...}, layer_id(name) and num_layers. Loading `model.init` for
    training may leave only the model's new head untrained (`fresh_prefixes`); `strict_init` (testing) leaves
    nothing: any missing tensor is an error naming it."""
    if model_cfg.task not in TASKS:
        raise ValueError(f"model.task={model_cfg.task!r}: expected one of {sorted(TASKS)}")
    model = TASKS[model_cfg.task].model(model_cfg, (num_frames, crop_size, crop_size))
    if model_cfg.init:
        load_pretrained(model, model_cfg.init, allowed_missing=() if strict_init else model.fresh_prefixes)
    return model


def train_loader(recipe: Recipe, micro_batch_size: int, rank: int, world_size: int) -> StreamLoader:
    """The training loader of `recipe`'s task over `data.train`."""
    placement = Placement(rank, world_size, recipe.data.num_workers)
    return build_train_loader(
        recipe.data, task_of(recipe).train_batching(recipe), micro_batch_size, placement, recipe.train.seed
    )


def eval_loader_and_evaluator(
    recipe: Recipe, views: Views, micro_batch_size: int, rank: int, world_size: int, split: Optional[ShardSplit] = None
) -> Optional[tuple[StreamLoader, EvaluatorFactory]]:
    """(loader, evaluator factory) over `split` (default `data.val`) with `views` per video, or None when the task
    has no evaluation."""
    task = task_of(recipe)
    if task.eval_batching is None or task.evaluator is None:
        return None
    data = recipe.data
    split = split or ShardSplit(data.val, data.val_manifest, read_policy(data))
    loader = build_test_loader(
        data, split, task.eval_batching(recipe, views), micro_batch_size, Placement(rank, world_size, data.num_workers)
    )
    return loader, task.evaluator(recipe, views)
