"""What the task slices share: the backbone of `model.arch`, the clip geometry of `data`, the class list of a split,
and the device step that normalises every batch."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from mfvideo.config.schema import DataConfig, ModelConfig, Recipe
from mfvideo.data.clips import TemporalSampling
from mfvideo.data.loader import BatchStep, normalising, read_policy
from mfvideo.data.shardlist import read_split_manifest
from mfvideo.models.mvit import ARCHS, MViTConfig

# Fine-tuning augmentations, each off at its default: pretraining and detection refuse them.
FINETUNING_AUGMENTATIONS = ("rand_augment", "erase_prob", "mixup_alpha", "cutmix_alpha", "label_smoothing")
# Class names shown in full in a message; the rest are counted.
MAX_NAMED_CLASSES = 5


@dataclass(frozen=True)
class Views:
    """The views a test or validation pass takes of every video: temporal clips × spatial crops."""

    clips: int
    crops: int


def backbone_config(model_cfg: ModelConfig) -> MViTConfig:
    if model_cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={model_cfg.arch!r}: expected one of {sorted(ARCHS)}")
    return replace(
        ARCHS[model_cfg.arch](),
        drop_path=model_cfg.drop_path,
        dim_mul_in_att=model_cfg.dim_mul_in_att,
        activation_checkpointing=model_cfg.activation_checkpointing,
    )


def temporal(data: DataConfig) -> TemporalSampling:
    return TemporalSampling(data.num_frames, data.sampling_rate, data.reference_fps, data.sampling)


def normalised(data: DataConfig) -> BatchStep:
    return normalising(data.mean, data.std)


def split_classes(data: DataConfig, pattern: str, manifest: Optional[str]) -> list[str]:
    """The class names a split's manifest lists (empty when its shards carry no labels); OSError or ValueError when
    the manifest cannot be read."""
    return list(read_split_manifest(pattern, manifest, read_policy(data)).get("classes") or [])


def named_classes(classes: Sequence[str]) -> str:
    more = f" and {len(classes) - MAX_NAMED_CLASSES} more" if len(classes) > MAX_NAMED_CLASSES else ""
    return f"{len(classes)} classes {list(classes[:MAX_NAMED_CLASSES])}{more}"


def augmentations_set(recipe: Recipe) -> list[str]:
    """The fine-tuning augmentations switched on, as `augment.key=value`."""
    return [
        f"augment.{key}={getattr(recipe.augment, key)!r}"
        for key in FINETUNING_AUGMENTATIONS
        if getattr(recipe.augment, key)
    ]


def no_probe(recipe: Recipe) -> list[str]:
    if not recipe.train.probe_every:
        return []
    return [
        (
            f"train.probe_every={recipe.train.probe_every}: the k-NN probe monitors pretraining; a "
            f"{recipe.model.task} run has its validation pass (train.eval_every); set it to 0"
        )
    ]


def labelled_split_problems(recipe: Recipe, what: str) -> list[str]:
    """`data.train` and, when set, `data.val` of a fine-tuning recipe: readable manifests listing
    `model.num_classes` classes (`what`: what the labels are called in a message)."""
    data, problems = recipe.data, []
    splits = [("data.train", data.train, data.train_manifest)]
    if data.val:
        splits.append(("data.val", data.val, data.val_manifest))
    elif recipe.train.eval_every:
        problems.append(f"train.eval_every={recipe.train.eval_every} but data.val is not set")
    for key, pattern, manifest in splits:
        try:
            classes = split_classes(data, pattern, manifest)
        except (OSError, ValueError) as err:
            problems.append(f"{key}={pattern!r}: {err}")
            continue
        if not any(classes):
            problems.append(f"{key}={pattern!r}: its manifest lists no {what}: the shards carry no labels")
        elif len(classes) != recipe.model.num_classes:
            problems.append(
                f"model.num_classes={recipe.model.num_classes} but {key}={pattern!r} has "
                f"{len(classes)} {what} in its manifest"
            )
    return problems
