"""The recipe's rules, checked once before any work: each key with a set of allowed values against that set, as
the stage that implements it declares it, then the rules of the recipe's task (`Task.rules`). Types and numeric
ranges are the schema's (`mfvideo.config.schema`), checked as the recipe loads."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from mfvideo.config.schema import Recipe
from mfvideo.data.boxes import TEST_BOX_SOURCES
from mfvideo.data.clips import SAMPLING_MODES
from mfvideo.data.decode import DECODE_DEVICES, DECODERS, DecoderUnavailable, check_decoder
from mfvideo.data.loader import read_policy
from mfvideo.data.shardlist import list_shards
from mfvideo.data.transforms import CROP_COUNTS
from mfvideo.engine.trainer import PRECISIONS, ZERO_STAGES
from mfvideo.models.classifier import POOLINGS
from mfvideo.models.detector import DETECTION_STRIDES
from mfvideo.models.mvit import ARCHS
from mfvideo.targets.masks import MASK_MODES
from mfvideo.tasks import TASKS

CHOICES = {
    "data.decode_device": DECODE_DEVICES,
    "data.decoder": DECODERS,
    "data.detection.test_boxes": TEST_BOX_SOURCES,
    "data.sampling": SAMPLING_MODES,
    "data.test_crops": CROP_COUNTS,
    "mask.mode": MASK_MODES,
    "model.arch": ARCHS,
    "model.detection_stride": DETECTION_STRIDES,
    "model.pooling": POOLINGS,
    "model.task": TASKS,
    "train.precision": PRECISIONS,
    "train.zero_stage": ZERO_STAGES,
}


def choice_problems(recipe: Recipe) -> list[str]:
    config = OmegaConf.structured(recipe)
    problems = []
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(config, key)
        if value not in allowed:
            problems.append(f"key '{key}' is {value!r}; expected one of {', '.join(map(str, allowed))}")
    return problems


def recipe_problems(recipe: Recipe) -> list[str]:
    """Everything wrong with `recipe` for its task, each naming its key: a value outside its allowed set (then
    nothing else is checked, the task being unknown or its rules unable to read the value), the task's own rules,
    a decoder that cannot run here, `model.init` not a file and `data.train` not readable."""
    problems = choice_problems(recipe)
    if problems:
        return problems
    problems = TASKS[recipe.model.task].rules(recipe)
    try:
        check_decoder(recipe.data.decoder, recipe.data.decode_device)
    except DecoderUnavailable as err:
        problems.append(str(err))
    if recipe.model.init and not Path(recipe.model.init).is_file():
        problems.append(f"model.init={recipe.model.init!r}: no such checkpoint file")
    try:
        list_shards(recipe.data.train, recipe.data.train_manifest, read_policy(recipe.data))
    except (OSError, ValueError) as err:
        problems.append(f"data.train={recipe.data.train!r}: {err}")
    return problems
