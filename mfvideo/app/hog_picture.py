"""`tools/hog_picture.py`: target and predicted HOG on the masked tokens of one training clip of a pretraining
recipe (`mfvideo.evaluation.hog_picture` draws it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import torch

from mfvideo.app.run import recipe_error
from mfvideo.config import Recipe, load_recipe_or_exit
from mfvideo.evaluation.hog_picture import draw_hog_picture, hog_panels
from mfvideo.tasks import build_model, pretrain, task_of, train_loader
from mfvideo.tasks.rules import choice_problems


def recipe_hog_picture(recipe: Recipe, out: str | Path, clip: int = 0, max_steps: int = 4) -> Path:
    """The picture for clip `clip` of the first batch of `recipe`'s training loader, predicted by the MaskFeat weights
    `model.init` (all of them: a missing tensor is an error), in eval mode on the GPU when there is one."""
    if task_of(recipe) is not pretrain.TASK:
        raise ValueError(
            f"model.task={recipe.model.task!r}: a HOG picture needs a pretraining recipe (model.task=pretrain)"
        )
    if not recipe.model.init:
        raise ValueError("model.init is not set: name the MaskFeat weights to draw predictions of")
    if clip < 0:
        raise ValueError(f"clip {clip} must be ≥ 0")
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size, strict_init=True)
    model.to(device).eval()
    batch = next(iter(train_loader(recipe, clip + 1, 0, 1)))
    panels = hog_panels(model, batch, recipe.data.mean, recipe.data.std, clip=clip, max_steps=max_steps)
    weights = Path(recipe.model.init)
    return draw_hog_picture(
        panels,
        out,
        title=f"MaskFeat {recipe.model.arch}, weights {weights.parent.name}/{weights.name}, clip {batch['key'][clip]}",
    )


def run_hog_picture(recipe_path: str, overrides: Sequence[str], out: str, clip: int, max_steps: int) -> Path:
    """Entry point of tools/hog_picture.py: exit 2 naming the problem for a recipe or weights that cannot draw."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    problems = choice_problems(recipe)
    if problems:
        recipe_error(recipe_path, problems)
    try:
        return recipe_hog_picture(recipe, out, clip=clip, max_steps=max_steps)
    except (ValueError, FileNotFoundError) as err:
        print(f"hog_picture: {err}", file=sys.stderr)
        raise SystemExit(2) from None
