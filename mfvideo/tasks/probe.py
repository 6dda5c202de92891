"""The online k-NN probe of pretraining (`train.probe_every`): the frozen backbone's pooled features of a labelled
train split vote for the videos of a labelled val split (`mfvideo.evaluation.probe`). Its clips are the
classification test's: `data.val_clips` temporal views and the centre crop per video."""

from __future__ import annotations

from typing import Callable

from torch import nn

from mfvideo.config.schema import Recipe
from mfvideo.data.loader import build_test_loader, read_policy
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.evaluation.probe import knn_probe
from mfvideo.tasks.classify import eval_batching
from mfvideo.tasks.common import Views, named_classes, split_classes


def knn_probe_of(
    recipe: Recipe, micro_batch_size: int, rank: int, world_size: int
) -> Callable[[nn.Module], dict] | None:
    """`probe(module) -> {"top1", "top5", "num_train", "num_val"}`: the k-NN probe of `module.features` from
    `data.probe_train` to `data.probe_val`, `train.probe_k` neighbours at `train.probe_temperature`; None when
    `train.probe_every` is 0. Its loaders are built once, here, and every call is collective over the ranks."""
    if not recipe.train.probe_every:
        return None
    data, train = recipe.data, recipe.train
    num_classes = len(split_classes(data, data.probe_train, data.probe_train_manifest))
    batching = eval_batching(recipe, Views(data.val_clips, 1))
    placement = Placement(rank, world_size, data.num_workers)
    train_loader, val_loader = (
        build_test_loader(data, ShardSplit(pattern, manifest, read_policy(data)), batching, micro_batch_size, placement)
        for pattern, manifest in (
            (data.probe_train, data.probe_train_manifest),
            (data.probe_val, data.probe_val_manifest),
        )
    )
    return lambda module: knn_probe(
        module, train_loader, val_loader, num_classes, train.probe_k, train.probe_temperature
    )


def probe_split_problems(recipe: Recipe) -> list[str]:
    """With the probe on, its splits read now, as the probe reads them, so that a probe that cannot run stops the job
    before training rather than at step 0: both set, each with a manifest that lists its classes (the labels the
    votes count), and the same classes in both (a val label must mean a train label)."""
    data, every = recipe.data, recipe.train.probe_every
    if not every:  # splits that no probe reads are not a reason to stop (the demo recipe names them, on or off)
        return []
    splits = [
        ("data.probe_train", data.probe_train, data.probe_train_manifest),
        ("data.probe_val", data.probe_val, data.probe_val_manifest),
    ]
    problems = [
        f"train.probe_every={every} but {key} is not set: the k-NN probe needs labelled train and val "
        f"shards (or set train.probe_every=0)"
        for key, pattern, _ in splits
        if not pattern
    ]
    classes = {}
    for key, pattern, manifest in splits:
        if not pattern:
            continue
        try:
            classes[key] = split_classes(data, pattern, manifest)
        except (OSError, ValueError) as err:
            problems.append(f"{key}={pattern!r}: {err}")
            continue
        if not any(classes[key]):
            problems.append(
                f"{key}={pattern!r}: its manifest lists no classes: the shards carry no labels for the "
                f"k-NN probe to vote with"
            )
    train, val = classes.get("data.probe_train"), classes.get("data.probe_val")
    if train and val and any(train) and train != val:
        problems.append(
            f"data.probe_train={data.probe_train!r} lists {named_classes(train)} but "
            f"data.probe_val={data.probe_val!r} lists {named_classes(val)}: the probe's val labels "
            f"must be the train labels (the same class list, in the same order)"
        )
    return problems
