"""`tools/train.py` and `tools/test.py`: a checked recipe, its task's parts, the engine.

Exit codes: 0 done; 2 bad input (a recipe, weights or checkpoint files that cannot be used, a run folder another job
holds), found before any work where it can be; 1 a run that failed (shards that cannot be read, too many samples that
do not decode, a checkpoint that cannot be written, losses that stay non-finite); 75 preempted, requeue to resume.
A known failure prints one paragraph; `MFVIDEO_TRACEBACK=1` shows the whole traceback too.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from mfvideo.app.inference import checkpoint_record
from mfvideo.common.log import current_world_size
from mfvideo.common.preemption import REQUEUE_EXIT_CODE
from mfvideo.config import Recipe, derive_batch_split, load_recipe_or_exit
from mfvideo.data.shardio import ShardReadError
from mfvideo.data.stream import TooManyFailures
from mfvideo.engine.checkpoint import WORLD_SIZE, CheckpointWriteError, layout_changes
from mfvideo.engine.distributed import DistInfo
from mfvideo.engine.safe_load import UnsafeCheckpoint
from mfvideo.engine.tester import TestParts, run_multiview_test
from mfvideo.engine.trainer import (
    NonFiniteLossError,
    Preempted,
    RunFolderBusy,
    TrainingParts,
    data_layout,
    train,
    world_change_problems,
)
from mfvideo.models.checkpoint import CheckpointMismatch
from mfvideo.tasks import Views, build_model, eval_loader_and_evaluator, task_of, train_loader
from mfvideo.tasks.probe import knn_probe_of
from mfvideo.tasks.rules import recipe_problems


def recipe_error(recipe_path: str, problems: Sequence[str]) -> None:
    for problem in problems:
        print(f"recipe error: {recipe_path}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def checked_recipe(recipe_path: str, overrides: Sequence[str], *, training: bool = False) -> Recipe:
    """The recipe, with its task's rules and the train shards' presence, and for `training` a resume whose
    checkpoint fits the micro-batch and loader workers (another world size resumes through a universal checkpoint);
    exit 2 naming every problem."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    problems = recipe_problems(recipe)
    try:
        derive_batch_split(recipe.train, current_world_size())
    except ValueError as err:
        problems.append(str(err))
    if training:
        layout = data_layout(recipe, current_world_size())
        del layout[WORLD_SIZE]  # another world size resumes through a universal checkpoint
        ckpt_dir = Path(recipe.train.output_dir) / "checkpoints"
        problems += layout_changes(ckpt_dir, layout)
        problems += world_change_problems(recipe, ckpt_dir, current_world_size())
    if problems:
        recipe_error(recipe_path, problems)
    return recipe


def training_parts(recipe: Recipe) -> TrainingParts:
    """The model (loading `model.init`), training loader, validation pass every `train.eval_every` epochs
    (`data.val_clips` temporal views, centre crop) and k-NN probe every `train.probe_every` epochs of `recipe`'s
    task, and the record its exported weights carry (`mfvideo.app.inference.checkpoint_record`)."""

    def validation(micro_batch_size: int, info: DistInfo):
        if not recipe.train.eval_every:
            return None
        return eval_loader_and_evaluator(
            recipe, Views(recipe.data.val_clips, 1), micro_batch_size, info.rank, info.world_size
        )

    return TrainingParts(
        model=lambda: build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size),
        loader=lambda micro_batch_size, info: train_loader(recipe, micro_batch_size, info.rank, info.world_size),
        validation=validation,
        probe=lambda micro_batch_size, info: knn_probe_of(recipe, micro_batch_size, info.rank, info.world_size),
        record=checkpoint_record(recipe),
    )


def test_parts(recipe: Recipe) -> TestParts:
    """`model.init` in the task's model, every tensor of it loaded; `data.test_clips` × `data.test_crops` views."""
    views = Views(recipe.data.test_clips, recipe.data.test_crops)
    return TestParts(
        model=lambda: build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size, strict_init=True),
        evaluation=lambda micro_batch_size, info: eval_loader_and_evaluator(
            recipe, views, micro_batch_size, info.rank, info.world_size
        ),
    )


# Failures with a message that says it all, and the exit code each gives (module docstring).
KNOWN_FAILURES = {
    CheckpointMismatch: 2,
    UnsafeCheckpoint: 2,
    RunFolderBusy: 2,
    ShardReadError: 1,
    TooManyFailures: 1,
    CheckpointWriteError: 1,
    NonFiniteLossError: 1,
}


@contextlib.contextmanager
def known_failures_exit() -> Iterator[None]:
    """A known failure ends the process with one paragraph on stderr and its exit code (`KNOWN_FAILURES`); with
    MFVIDEO_TRACEBACK=1 the traceback is printed first. Anything else propagates with its traceback (exit 1)."""
    try:
        yield
    except tuple(KNOWN_FAILURES) as err:
        if os.environ.get("MFVIDEO_TRACEBACK") == "1":
            import traceback

            traceback.print_exc()
        code = next(code for kind, code in KNOWN_FAILURES.items() if isinstance(err, kind))
        message = str(err).strip()
        if "Original Traceback" in message:  # raised in a loader worker: its last line is the message
            message = message.splitlines()[-1]
        print(f"error ({type(err).__name__}): {message}", file=sys.stderr)
        raise SystemExit(code) from None


def run_training(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/train.py; exits with `REQUEUE_EXIT_CODE` when preempted (`mfvideo.common.preemption`)."""
    recipe = checked_recipe(recipe_path, overrides, training=True)
    with known_failures_exit():
        try:
            train(recipe, training_parts(recipe), local_rank)
        except Preempted as stop:
            print(
                f"{stop}: exiting with {REQUEUE_EXIT_CODE} (requeue me); run the same command to resume",
                file=sys.stderr,
            )
            raise SystemExit(REQUEUE_EXIT_CODE) from None


def run_test(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/test.py: the recipe's checks, plus a model to test and a task that can be scored."""
    recipe = checked_recipe(recipe_path, overrides)
    problems = []
    if task_of(recipe).evaluator is None:
        problems.append(f"model.task={recipe.model.task!r} has no test metric (test a fine-tuned model)")
    if not recipe.model.init:
        problems.append("model.init is not set: name the weights to test (e.g. model.init=outputs/run/model.pt)")
    if not recipe.data.val:
        problems.append("data.val is not set: name the shards to test on")
    if problems:
        recipe_error(recipe_path, problems)
    with known_failures_exit():
        try:
            run_multiview_test(recipe, test_parts(recipe), local_rank)
        except FileNotFoundError as err:  # model.init vanished since the checks
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
