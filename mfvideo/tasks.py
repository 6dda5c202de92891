"""The tasks mfvideo trains and tests, each registered once: its model, the batch fields its loaders collate, the
batch-level augmentation of its training batches, its evaluator and the recipe values it cannot work with.

This module wires the stages together (data, models, evaluation) so that none of them, and not the engine, needs
to know which task runs: the engine calls `model(batch)["loss"]`, and an evaluator's `update(batch, outputs)`.
`TASKS` is also where the recipe's allowed `model.task` values come from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
from torch import nn

from mfvideo.config.schema import ModelConfig, Recipe
from mfvideo.data.loader import BatchAugment
from mfvideo.models.checkpoint import load_pretrained
from mfvideo.models.classifier import MViTClassifier
from mfvideo.models.detector import Detector
from mfvideo.models.maskfeat import MaskFeat
from mfvideo.models.mvit import ARCHS, MViTConfig



def backbone_config(model_cfg: ModelConfig) -> MViTConfig:
    if model_cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={model_cfg.arch!r}: expected one of {sorted(ARCHS)}")
    return replace(ARCHS[model_cfg.arch](), drop_path=model_cfg.drop_path, dim_mul_in_att=model_cfg.dim_mul_in_att,
                   activation_checkpointing=model_cfg.activation_checkpointing)


def _maskfeat(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    hog = model_cfg.hog
    return MaskFeat(replace(backbone_config(model_cfg), keep_last_q_stride=False), input_size,
                    cell_size=hog.cell_size, bins=hog.bins, gaussian_window=hog.gaussian_window)


def _classifier(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    return MViTClassifier(backbone_config(model_cfg), input_size, model_cfg.num_classes, model_cfg.dropout,
                          model_cfg.pooling)


def _detector(model_cfg: ModelConfig, input_size: Sequence[int]) -> nn.Module:
    return Detector(backbone_config(model_cfg), input_size, model_cfg.num_classes, model_cfg.dropout,
                    model_cfg.detection_stride)


def _mixing(recipe: Recipe) -> Optional[BatchAugment]:
    """Random erasing then mixup/CutMix with label smoothing, on the training batch where it is consumed. The
    targets always become soft (B×classes), so the loss is one soft-target cross-entropy whatever is switched on."""
    from mfvideo.data.batch import MixupCutmix, RandomErasing

    aug = recipe.augment
    erasing = RandomErasing(aug.erase_prob) if aug.erase_prob > 0 else None
    mixing = MixupCutmix(recipe.model.num_classes, mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha,
                         switch_prob=aug.mix_switch_prob, label_smoothing=aug.label_smoothing, prob=aug.mix_prob)

    def augment(batch: dict, rng: np.random.Generator) -> dict:
        video = batch["video"] if erasing is None else erasing(batch["video"], rng)
        batch["video"], batch["target"] = mixing(video, batch["label"], rng)
        return batch

    return augment


def _view_aggregator(recipe: Recipe, num_temporal_views: int, num_crops: int):
    from mfvideo.data.loader import read_policy
    from mfvideo.data.shardlist import read_split_manifest
    from mfvideo.evaluation.classification import ViewAggregator

    classes = read_split_manifest(recipe.data.val, recipe.data.val_manifest, read_policy(recipe.data)).get("classes") or None
    return lambda: ViewAggregator(recipe.model.num_classes, num_temporal_views, num_crops, classes)


def _ava_evaluator(recipe: Recipe, num_temporal_views: int, num_crops: int):
    from mfvideo.evaluation.ava import AvaEvaluator

    detection = recipe.data.detection
    return lambda: AvaEvaluator(detection.val_groundtruth, detection.label_map, detection.val_excluded)


def _no_finetuning_values(recipe: Recipe) -> list[str]:
    aug = recipe.augment
    problems = [f"augment.{key}={getattr(aug, key)!r}: a fine-tuning augmentation; MaskFeat pretraining has no "
                f"labels to mix and its HOG target must see the clip the model sees (set it to its default)"
                for key in ("rand_augment", "erase_prob", "mixup_alpha", "cutmix_alpha", "label_smoothing")
                if getattr(aug, key)]
    if recipe.mask.mode == "none":
        problems.append("mask.mode='none': MaskFeat pretraining predicts the HOG of masked regions and needs a mask "
                        "(cube for video, block for images)")
    if recipe.train.eval_every:
        problems.append(f"train.eval_every={recipe.train.eval_every}: pretraining has no validation metric; "
                        "set it to 0")
    return problems + _probe_values(recipe)


# Class names shown in full in a message; the rest are counted.
MAX_NAMED_CLASSES = 5


def _named_classes(classes: Sequence[str]) -> str:
    more = f" and {len(classes) - MAX_NAMED_CLASSES} more" if len(classes) > MAX_NAMED_CLASSES else ""
    return f"{len(classes)} classes {list(classes[:MAX_NAMED_CLASSES])}{more}"


def _probe_values(recipe: Recipe) -> list[str]:
    """With the probe on, its splits read now, as the probe reads them, so that a probe that cannot run stops the job
    before training rather than at step 0: both set, each with a manifest that lists its
    classes (the labels the votes count), and the same classes in both (a val label must mean a train label)."""
    from mfvideo.data.loader import read_policy
    from mfvideo.data.shardlist import read_split_manifest

    data, every = recipe.data, recipe.train.probe_every
    if not every:  # splits that no probe reads are not a reason to stop (the demo recipe names them, on or off)
        return []
    splits = [("data.probe_train", data.probe_train, data.probe_train_manifest),
              ("data.probe_val", data.probe_val, data.probe_val_manifest)]
    problems = [f"train.probe_every={every} but {key} is not set: the k-NN probe needs labelled train and val "
                f"shards (or set train.probe_every=0)" for key, pattern, _ in splits if every and not pattern]
    classes = {}
    for key, pattern, manifest in splits:
        if not pattern:
            continue
        try:
            classes[key] = list(read_split_manifest(pattern, manifest, read_policy(data)).get("classes") or [])
        except (OSError, ValueError) as err:
            problems.append(f"{key}={pattern!r}: {err}")
            continue
        if not any(classes[key]):
            problems.append(f"{key}={pattern!r}: its manifest lists no classes: the shards carry no labels for the "
                            f"k-NN probe to vote with")
    train, val = classes.get("data.probe_train"), classes.get("data.probe_val")
    if train and val and any(train) and train != val:
        problems.append(f"data.probe_train={data.probe_train!r} lists {_named_classes(train)} but "
                        f"data.probe_val={data.probe_val!r} lists {_named_classes(val)}: the probe's val labels "
                        f"must be the train labels (the same class list, in the same order)")
    return problems


def _no_probe(recipe: Recipe) -> list[str]:
    if not recipe.train.probe_every:
        return []
    return [(f"train.probe_every={recipe.train.probe_every}: the k-NN probe monitors pretraining; a "
             f"{recipe.model.task} run has its validation pass (train.eval_every); set it to 0")]


def _classification_values(recipe: Recipe) -> list[str]:
    from mfvideo.data.loader import read_policy
    from mfvideo.data.shardlist import read_split_manifest

    problems = []
    if recipe.mask.mode != "none":
        problems.append(f"mask.mode={recipe.mask.mode!r}: fine-tuning sees whole clips; set mask.mode=none")
    if recipe.model.num_classes < 2:
        problems.append(f"model.num_classes={recipe.model.num_classes}: classification needs at least 2 classes")
    splits = [("data.train", recipe.data.train, recipe.data.train_manifest)]
    if recipe.data.val:
        splits.append(("data.val", recipe.data.val, recipe.data.val_manifest))
    elif recipe.train.eval_every:
        problems.append(f"train.eval_every={recipe.train.eval_every} but data.val is not set")
    for key, pattern, manifest in splits:
        try:
            classes = read_split_manifest(pattern, manifest, read_policy(recipe.data)).get("classes") or []
        except (OSError, ValueError) as err:
            problems.append(f"{key}={pattern!r}: {err}")
            continue
        if not any(classes):
            problems.append(f"{key}={pattern!r}: its manifest lists no classes: the shards carry no labels to "
                            f"{'train' if key == 'data.train' else 'validate'} a classifier on")
        elif len(classes) != recipe.model.num_classes:
            problems.append(f"model.num_classes={recipe.model.num_classes} but {key}={pattern!r} has "
                            f"{len(classes)} classes in its manifest")
    return problems + _no_probe(recipe)


def _detection_values(recipe: Recipe) -> list[str]:
    """Detection clips are whole keyframe-centred clips whose boxes move with the pixels: nothing may mask, mix or
    warp them; one full-frame view per keyframe is tested; the AVA evaluation needs its files."""
    from mfvideo.data.loader import read_policy
    from mfvideo.data.shardlist import read_split_manifest

    aug, data, detection = recipe.augment, recipe.data, recipe.data.detection
    problems = [f"augment.{key}={getattr(aug, key)!r}: boxes cannot follow it (detection takes flips and crops "
                f"only; set it to its default)"
                for key in ("rand_augment", "erase_prob", "mixup_alpha", "cutmix_alpha", "label_smoothing")
                if getattr(aug, key)]
    if recipe.mask.mode != "none":
        problems.append(f"mask.mode={recipe.mask.mode!r}: detection sees whole clips; set mask.mode=none")
    problems += [f"data.{key}={getattr(data, key)}: detection tests one full-frame clip per keyframe; set it to 1"
                 for key in ("test_clips", "test_crops", "val_clips") if getattr(data, key) != 1]
    if data.sampling != "random":
        problems.append(f"data.sampling={data.sampling!r}: detection clips are centred on their keyframe; set "
                        f"data.sampling=random")
    if data.val or recipe.train.eval_every:
        problems += [f"data.detection.{key} is not set: the AVA evaluation of data.val needs it"
                     for key in ("label_map", "val_groundtruth") if not getattr(detection, key)]
    if recipe.train.eval_every and not data.val:
        problems.append(f"train.eval_every={recipe.train.eval_every} but data.val is not set")
    if data.val and detection.label_map and detection.val_groundtruth:
        problems += _evaluation_file_problems(recipe)
    splits = [("data.train", data.train, data.train_manifest)]
    if data.val:
        splits.append(("data.val", data.val, data.val_manifest))
    for key, pattern, manifest in splits:
        try:
            classes = read_split_manifest(pattern, manifest, read_policy(data)).get("classes") or []
        except (OSError, ValueError) as err:
            problems.append(f"{key}={pattern!r}: {err}")
            continue
        if len(classes) != recipe.model.num_classes:
            problems.append(f"model.num_classes={recipe.model.num_classes} but {key}={pattern!r} has "
                            f"{len(classes)} action ids in its manifest (AVA: 80)")
    return problems + _no_probe(recipe)


def _evaluation_file_problems(recipe: Recipe) -> list[str]:
    """The AVA evaluation's files read now, as the evaluator reads them, so that a bad row stops the job before
    training rather than at its first validation."""
    from mfvideo.ava_files import AvaFormatError
    from mfvideo.evaluation.ava import AvaEvaluator

    detection = recipe.data.detection
    try:
        evaluator = AvaEvaluator(detection.val_groundtruth, detection.label_map, detection.val_excluded)
    except (OSError, AvaFormatError) as err:
        return [f"data.detection: {err}"]
    largest = max(evaluator.label_map.names)
    if largest > recipe.model.num_classes:
        return [f"model.num_classes={recipe.model.num_classes} but data.detection.label_map="
                f"{detection.label_map!r} evaluates action id {largest}"]
    return []


@dataclass(frozen=True)
class Task:
    """One task: how its model is built, what its batches carry and how it is augmented, checked and evaluated."""

    model: Callable[[ModelConfig, Sequence[int]], nn.Module]
    train_fields: tuple[str, ...]          # batch fields (mfvideo.data.collate.FIELDS) of training batches
    eval_fields: tuple[str, ...]           # ... of validation and test batches; () when the task has no evaluation
    check: Callable[[Recipe], list[str]]   # recipe values this task cannot work with, each naming its key
    batch_augment: Callable[[Recipe], Optional[BatchAugment]] = lambda recipe: None
    keep_pixels: bool = False              # training batches also carry the uint8 clip ("pixels") the loader made
    # (recipe, temporal views, crops) -> a factory of fresh evaluators, one per pass (mfvideo.engine.evaluate)
    evaluator: Optional[Callable] = None


TASKS = {
    # The HOG target is computed from the integer pixel values, where its Sobel gradients are exact (DESIGN §2).
    "pretrain": Task(model=_maskfeat, train_fields=("mask",), eval_fields=(), check=_no_finetuning_values,
                     keep_pixels=True),
    "classify": Task(model=_classifier, train_fields=("label",), eval_fields=("label", "view"),
                     check=_classification_values, batch_augment=_mixing, evaluator=_view_aggregator),
    "detect": Task(model=_detector, train_fields=("boxes",), eval_fields=("boxes",), check=_detection_values,
                   evaluator=_ava_evaluator),
}


def task_of(recipe: Recipe) -> Task:
    return TASKS[recipe.model.task]


def build_model(model_cfg: ModelConfig, num_frames: int, crop_size: int, strict_init: bool = False) -> nn.Module:
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


def train_loader(recipe: Recipe, micro_batch_size: int, rank: int, world_size: int):
    """The training loader of `recipe`'s task: its fields, its worker-side and batch-level augmentation."""
    from mfvideo.data.loader import build_train_loader

    task = task_of(recipe)
    return build_train_loader(recipe.data, recipe.mask, micro_batch_size, rank, world_size, recipe.train.seed,
                              fields=task.train_fields, rand_augment=recipe.augment.rand_augment or None,
                              batch_augment=task.batch_augment(recipe), keep_pixels=task.keep_pixels,
                              num_actions=recipe.model.num_classes)


def eval_loader_and_evaluator(recipe: Recipe, micro_batch_size: int, rank: int, world_size: int, num_clips: int,
                              num_crops: int):
    """(loader, evaluator factory) over `data.val` with `num_clips` temporal views × `num_crops` crops per video, or
    None when the task has no evaluation."""
    from mfvideo.data.loader import build_test_loader

    task = task_of(recipe)
    if task.evaluator is None:
        return None
    loader = build_test_loader(recipe.data, micro_batch_size, rank, world_size, num_clips=num_clips,
                               num_crops=num_crops, fields=task.eval_fields, num_actions=recipe.model.num_classes)
    return loader, task.evaluator(recipe, num_clips, num_crops)


def knn_probe_of(recipe: Recipe, micro_batch_size: int, rank: int,
                 world_size: int) -> Callable[[nn.Module], dict] | None:
    """`probe(module) -> {"top1", "top5", "num_train", "num_val"}`: the k-NN probe (`mfvideo.evaluation.probe`) of
    `module.features` from `data.probe_train` to `data.probe_val`, `data.val_clips` temporal views and the centre
    crop per video, `train.probe_k` neighbours at `train.probe_temperature`; None when `train.probe_every` is 0.
    Its loaders are built once, here, and every call is collective over the ranks."""
    if not recipe.train.probe_every:
        return None
    from mfvideo.data.loader import build_test_loader, read_policy
    from mfvideo.data.shardlist import read_split_manifest
    from mfvideo.evaluation.probe import knn_probe

    data, train = recipe.data, recipe.train
    num_classes = len(read_split_manifest(data.probe_train, data.probe_train_manifest, read_policy(data))["classes"])
    train_loader, val_loader = (build_test_loader(data, micro_batch_size, rank, world_size, pattern, manifest,
                                                  num_clips=data.val_clips, num_crops=1, fields=("label", "view"))
                                for pattern, manifest in ((data.probe_train, data.probe_train_manifest),
                                                          (data.probe_val, data.probe_val_manifest)))
    return lambda module: knn_probe(module, train_loader, val_loader, num_classes, train.probe_k,
                                    train.probe_temperature)
