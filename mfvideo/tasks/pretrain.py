"""MaskFeat pretraining: masked clips in, the HOG of the masked regions predicted; no labels, no evaluation (the
k-NN probe of `mfvideo.tasks.probe` monitors it instead)."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from torch import nn

from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data.clips import TrainClips
from mfvideo.data.collate import MASKS, Collate
from mfvideo.data.loader import Batching, keeping_pixels
from mfvideo.data.transforms import TrainTransform
from mfvideo.models.maskfeat import MaskFeat
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks.common import augmentations_set, backbone_config, normalised, temporal
from mfvideo.tasks.probe import probe_split_problems
from mfvideo.tasks.task import Task


def model(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    hog = model_cfg.hog
    return MaskFeat(
        replace(backbone_config(model_cfg), keep_last_q_stride=False),
        input_size,
        cell_size=hog.cell_size,
        bins=hog.bins,
        gaussian_window=hog.gaussian_window,
    )


def train_batching(recipe: Recipe) -> Batching:
    """Random clips and crops, each with its mask; the HOG target is computed on the device from the uint8 pixels,
    where its Sobel gradients are exact (docs/design.md §2), so they are kept beside the normalised video."""
    data, mask = recipe.data, recipe.mask
    masks = build_mask_generator(
        mask.mode,
        mask_grid(data.num_frames, data.crop_size),
        ratio=mask.ratio,
        min_units=mask.min_units,
        max_tries=mask.max_tries,
    )
    transform = TrainTransform(data.crop_size, data.train_crop_area, data.train_crop_aspect, flip=data.flip)
    clips = TrainClips(temporal(data), transform, data.repeated_sampling, masks)
    return Batching(clips, Collate((MASKS,)), (keeping_pixels, normalised(data)))


def rules(recipe: Recipe) -> list[str]:
    problems = [
        f"{setting}: a fine-tuning augmentation; MaskFeat pretraining has no labels to mix and its HOG "
        f"target must see the clip the model sees (set it to its default)"
        for setting in augmentations_set(recipe)
    ]
    if recipe.mask.mode == "none":
        problems.append(
            "mask.mode='none': MaskFeat pretraining predicts the HOG of masked regions and needs a mask "
            "(cube for video, block for images)"
        )
    else:
        try:
            mask_grid(recipe.data.num_frames, recipe.data.crop_size)
        except ValueError as err:
            problems.append(
                f"keys 'data.num_frames' ({recipe.data.num_frames}) and 'data.crop_size' "
                f"({recipe.data.crop_size}) do not fit the mask grid: "
                f"{str(err).removeprefix('mask_grid: ')}"
            )
    if recipe.train.eval_every:
        problems.append(
            f"train.eval_every={recipe.train.eval_every}: pretraining has no validation metric; set it to 0"
        )
    return problems + probe_split_problems(recipe)


TASK = Task(name="pretrain", model=model, train_batching=train_batching, rules=rules)
