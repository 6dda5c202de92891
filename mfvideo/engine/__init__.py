"""Engine stage: DeepSpeed training loop, evaluation loop, schedules, checkpoints and resume; the entry points of
tools/train.py, tools/test.py and tools/probe.py, which check everything about a recipe before any process group or
data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from mfvideo.config import Recipe, derive_batch_split, load_recipe_or_exit
from mfvideo.log import current_world_size


def _recipe_error(recipe_path: str, problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"recipe error: {recipe_path}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def _checked_recipe(recipe_path: str, overrides: Sequence[str], training: bool = False) -> Recipe:
    """The recipe, with the task's own checks and the train shards' presence, and for `training` a resume whose
    checkpoint fits the micro-batch and loader workers (another world size resumes through a universal checkpoint);
    exit 2 naming every problem."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    from mfvideo.data.loader import read_policy
    from mfvideo.data.shardlist import list_shards
    from mfvideo.tasks import task_of

    problems = task_of(recipe).check(recipe)
    if recipe.model.init and not Path(recipe.model.init).is_file():
        problems.append(f"model.init={recipe.model.init!r}: no such checkpoint file")
    try:
        derive_batch_split(recipe.train, current_world_size())
    except ValueError as err:
        problems.append(str(err))
    if training:
        from mfvideo.engine.checkpoint import WORLD_SIZE, layout_changes
        from mfvideo.engine.trainer import data_layout

        layout = data_layout(recipe, current_world_size())
        del layout[WORLD_SIZE]  # another world size resumes through a universal checkpoint
        problems += layout_changes(Path(recipe.train.output_dir) / "checkpoints", layout)
    try:
        list_shards(recipe.data.train, recipe.data.train_manifest, read_policy(recipe.data))
    except (OSError, ValueError) as err:
        problems.append(f"data.train={recipe.data.train!r}: {err}")
    if problems:
        _recipe_error(recipe_path, problems)
    return recipe


def run_training(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/train.py; exits with `REQUEUE_EXIT_CODE` when preempted (`mfvideo.preemption`)."""
    recipe = _checked_recipe(recipe_path, overrides, training=True)
    from mfvideo.engine.trainer import Preempted, train
    from mfvideo.preemption import REQUEUE_EXIT_CODE

    try:
        train(recipe, local_rank)
    except Preempted as stop:
        print(f"{stop}: exiting with {REQUEUE_EXIT_CODE} (requeue me); run the same command to resume",
              file=sys.stderr)
        raise SystemExit(REQUEUE_EXIT_CODE) from None


def run_test(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/test.py: the recipe's checks, plus a model to test and a task that can be scored."""
    recipe = _checked_recipe(recipe_path, overrides)
    from mfvideo.tasks import task_of

    problems = []
    if task_of(recipe).evaluator is None:
        problems.append(f"model.task={recipe.model.task!r} has no test metric (test a fine-tuned model)")
    if not recipe.model.init:
        problems.append("model.init is not set: name the weights to test (e.g. model.init=outputs/run/model.pt)")
    if not recipe.data.val:
        problems.append("data.val is not set: name the shards to test on")
    if problems:
        _recipe_error(recipe_path, problems)
    from mfvideo.engine.tester import run_multiview_test

    try:
        run_multiview_test(recipe, local_rank)
    except (FileNotFoundError, ValueError) as err:  # weights that do not fit the model, unreadable checkpoint
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_probe(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/probe.py: a pretraining or classification recipe, a checkpoint to probe, and labelled
    probe splits with the same classes, all checked before any process group or data; weights that leave a backbone
    tensor missing exit 2 naming it."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    from mfvideo.engine.prober import PROBED_TASKS, probe_split_problems, run_linear_and_knn_probe

    problems = []
    if recipe.model.task not in PROBED_TASKS:
        problems.append(f"model.task={recipe.model.task!r}: the probe scores video features; use a pretraining or "
                        f"classification recipe ({', '.join(PROBED_TASKS)})")
    if not recipe.model.init:
        problems.append("model.init is not set: name the weights to probe (e.g. model.init=outputs/run/model.pt)")
    elif not Path(recipe.model.init).is_file():
        problems.append(f"model.init={recipe.model.init!r}: no such checkpoint file")
    problems += probe_split_problems(recipe)
    if problems:
        _recipe_error(recipe_path, problems)
    try:
        run_linear_and_knn_probe(recipe, local_rank)
    except (FileNotFoundError, ValueError) as err:  # weights that do not fit the backbone, unreadable checkpoint
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
