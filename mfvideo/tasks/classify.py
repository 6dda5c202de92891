"""Video classification (fine-tuning on K400/K600/K700/SSv2, images as single-frame videos): labelled clips in,
class scores out; tested over `data.test_clips` × `data.test_crops` views per video."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from torch import nn

from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data import fields
from mfvideo.data.augment import RandAugment
from mfvideo.data.batch import MixupCutmix, RandomErasing
from mfvideo.data.clips import EvalClips, TrainClips
from mfvideo.data.collate import LABELS, VIEWS, Collate
from mfvideo.data.loader import Batching, BatchStep
from mfvideo.data.transforms import EvalTransform, TrainTransform
from mfvideo.evaluation.classification import ViewAggregator
from mfvideo.models.classifier import MViTClassifier
from mfvideo.tasks.common import (
    Views,
    backbone_config,
    labelled_split_problems,
    no_probe,
    normalised,
    split_classes,
    temporal,
)
from mfvideo.tasks.task import EvaluatorFactory, Task


def model(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    return MViTClassifier(
        backbone_config(model_cfg), input_size, model_cfg.num_classes, model_cfg.dropout, model_cfg.pooling
    )


def mixing(recipe: Recipe) -> BatchStep:
    """Random erasing then mixup/CutMix with label smoothing, on the device where the batch is consumed. The
    targets always become soft (B×classes), so the loss is one soft-target cross-entropy whatever is switched on."""
    aug = recipe.augment
    erasing = RandomErasing(aug.erase_prob) if aug.erase_prob > 0 else None
    mixup = MixupCutmix(
        recipe.model.num_classes,
        mixup_alpha=aug.mixup_alpha,
        cutmix_alpha=aug.cutmix_alpha,
        switch_prob=aug.mix_switch_prob,
        label_smoothing=aug.label_smoothing,
        prob=aug.mix_prob,
    )

    def step(batch: dict, rng: np.random.Generator) -> dict:
        video = batch[fields.VIDEO.name]
        if erasing is not None:
            video = erasing(video, rng)
        batch[fields.VIDEO.name], batch[fields.TARGET.name] = mixup(video, batch[fields.LABEL.name], rng)
        return batch

    return step


def train_batching(recipe: Recipe) -> Batching:
    data, spec = recipe.data, recipe.augment.rand_augment
    transform = TrainTransform(
        data.crop_size,
        data.train_crop_area,
        data.train_crop_aspect,
        flip=data.flip,
        rand_augment=RandAugment.from_spec(spec) if spec else None,
    )
    clips = TrainClips(temporal(data), transform, data.repeated_sampling, None)
    return Batching(clips, Collate((LABELS,)), (normalised(data), mixing(recipe)))


def eval_batching(recipe: Recipe, views: Views) -> Batching:
    """`views.clips` temporal views × `views.crops` crops of `data.crop_size`² per video (short side
    `data.test_short_side`), each with its label and view id."""
    data = recipe.data
    clips = EvalClips(temporal(data), EvalTransform(data.crop_size, data.test_short_side, views.crops), views.clips)
    return Batching(clips, Collate((LABELS, VIEWS)), (normalised(data),))


def evaluator(recipe: Recipe, views: Views) -> EvaluatorFactory:
    classes: Optional[list[str]] = split_classes(recipe.data, recipe.data.val, recipe.data.val_manifest) or None
    return lambda: ViewAggregator(recipe.model.num_classes, views.clips, views.crops, classes)


def rules(recipe: Recipe) -> list[str]:
    problems = []
    if recipe.mask.mode != "none":
        problems.append(f"mask.mode={recipe.mask.mode!r}: fine-tuning sees whole clips; set mask.mode=none")
    if recipe.augment.rand_augment and recipe.data.decode_device != "cpu":
        problems.append(
            f"data.decode_device={recipe.data.decode_device!r}: RandAugment ({recipe.augment.rand_augment!r}) runs "
            "on decoded clips in the workers; set data.decode_device=cpu or augment.rand_augment=''"
        )
    if recipe.model.num_classes < 2:
        problems.append(f"model.num_classes={recipe.model.num_classes}: classification needs at least 2 classes")
    return problems + labelled_split_problems(recipe, "classes") + no_probe(recipe)


TASK = Task(
    name="classify",
    model=model,
    train_batching=train_batching,
    rules=rules,
    eval_batching=eval_batching,
    evaluator=evaluator,
)
