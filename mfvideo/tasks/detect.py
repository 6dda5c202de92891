"""AVA action detection: keyframe-centred clips whose person boxes move with the pixels, an action score per box
(multi-label), scored by the AVA evaluation (frame mAP at IoU 0.5).

Training crops `data.crop_size`² after a short-side jitter in `data.detection.train_short_side` and flips
(`data.flip`), with the ground truth plus the detections scoring ≥ `data.detection.train_score` as RoIs. Testing
takes the full frame at short side `data.test_short_side`, one clip per keyframe, with the detections scoring ≥
`data.detection.test_score` (or the ground truth: `data.detection.test_boxes`); the frames of a batch are padded
right and bottom to a multiple of `TEST_PAD_MULTIPLE`. The action ids are `model.num_classes` columns.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from mfvideo.common.ava_files import AvaFormatError, read_excluded, read_label_map
from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data.clips import DetectionEvalClips, DetectionTrainClips
from mfvideo.data.collate import ROIS, Collate
from mfvideo.data.loader import Batching
from mfvideo.data.transforms import DetectionEvalTransform, DetectionTrainTransform
from mfvideo.evaluation.ava import AvaEvaluator, read_ground_truth
from mfvideo.models.detector import Detector
from mfvideo.tasks.common import (
    Views,
    augmentations_set,
    backbone_config,
    labelled_split_problems,
    no_probe,
    normalised,
    temporal,
)
from mfvideo.tasks.task import EvaluatorFactory, Task

# Full test frames are padded right and bottom to a multiple of the largest output stride a detector may read
# (model.detection_stride 16 or 32): the detector sees each clip at its own size rounded up to its stride.
TEST_PAD_MULTIPLE = 32


def model(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    return Detector(
        backbone_config(model_cfg), input_size, model_cfg.num_classes, model_cfg.dropout, model_cfg.detection_stride
    )


def train_batching(recipe: Recipe) -> Batching:
    data, detection = recipe.data, recipe.data.detection
    transform = DetectionTrainTransform(data.crop_size, detection.train_short_side, flip=data.flip)
    clips = DetectionTrainClips(
        temporal(data), transform, data.repeated_sampling, recipe.model.num_classes, detection.train_score
    )
    return Batching(clips, Collate((ROIS,)), (normalised(data),))


def eval_batching(recipe: Recipe, views: Views) -> Batching:
    """One full-frame clip per keyframe (`views` must be 1 × 1: the rules check it)."""
    data, detection = recipe.data, recipe.data.detection
    clips = DetectionEvalClips(
        temporal(data),
        DetectionEvalTransform(data.test_short_side),
        recipe.model.num_classes,
        detection.test_score,
        detection.test_boxes,
    )
    return Batching(clips, Collate((ROIS,), TEST_PAD_MULTIPLE), (normalised(data),))


def evaluator(recipe: Recipe, views: Views) -> EvaluatorFactory:
    detection = recipe.data.detection
    return lambda: AvaEvaluator(detection.val_groundtruth, detection.label_map, detection.val_excluded)


def rules(recipe: Recipe) -> list[str]:
    """Detection clips are whole keyframe-centred clips whose boxes move with the pixels: nothing may mask, mix or
    warp them; one full-frame view per keyframe is tested; the AVA evaluation needs its files."""
    data, detection = recipe.data, recipe.data.detection
    problems = [
        f"{setting}: boxes cannot follow it (detection takes flips and crops only; set it to its default)"
        for setting in augmentations_set(recipe)
    ]
    if recipe.mask.mode != "none":
        problems.append(f"mask.mode={recipe.mask.mode!r}: detection sees whole clips; set mask.mode=none")
    if data.decode_device != "cpu":
        problems.append(
            f"data.decode_device={data.decode_device!r}: detection's boxes move with crops made in the workers; "
            "set data.decode_device=cpu"
        )
    problems += [
        f"data.{key}={getattr(data, key)}: detection tests one full-frame clip per keyframe; set it to 1"
        for key in ("test_clips", "test_crops", "val_clips")
        if getattr(data, key) != 1
    ]
    if data.sampling != "random":
        problems.append(
            f"data.sampling={data.sampling!r}: detection clips are centred on their keyframe; set data.sampling=random"
        )
    short_side = detection.train_short_side
    if len(short_side) != 2 or not data.crop_size <= short_side[0] <= short_side[1]:
        problems.append(
            f"data.detection.train_short_side={list(short_side)}: must be [min, max] with "
            f"data.crop_size={data.crop_size} <= min <= max"
        )
    if data.val or recipe.train.eval_every:
        problems += [
            f"data.detection.{key} is not set: the AVA evaluation of data.val needs it"
            for key in ("label_map", "val_groundtruth")
            if not getattr(detection, key)
        ]
    if data.val and detection.label_map and detection.val_groundtruth:
        problems += _evaluation_file_problems(recipe)
    return problems + labelled_split_problems(recipe, "action ids") + no_probe(recipe)


def _evaluation_file_problems(recipe: Recipe) -> list[str]:
    """The AVA evaluation's files read now, as the evaluator reads them, so that a bad row stops the job before
    training rather than at its first validation."""
    detection = recipe.data.detection
    try:
        label_map = read_label_map(detection.label_map)
        read_ground_truth(detection.val_groundtruth, label_map)
        if detection.val_excluded:
            read_excluded(detection.val_excluded)
    except (OSError, AvaFormatError) as err:
        return [f"data.detection: {err}"]
    largest = max(label_map.names)
    if largest > recipe.model.num_classes:
        return [
            f"model.num_classes={recipe.model.num_classes} but data.detection.label_map="
            f"{detection.label_map!r} evaluates action id {largest}"
        ]
    return []


TASK = Task(
    name="detect",
    model=model,
    train_batching=train_batching,
    rules=rules,
    eval_batching=eval_batching,
    evaluator=evaluator,
)
