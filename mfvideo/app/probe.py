"""`tools/probe.py`: the frozen backbone of any checkpoint scored by a k-NN vote and by a linear probe.

The standard protocol for self-supervised video models. The weights of `model.init` (an mfvideo `model.pt` of
MaskFeat or of a classifier, a PySlowFast or a torchvision checkpoint) go into the recipe's model: MaskFeat for a
pretraining recipe, the classifier for a fine-tuning one, so the backbone has the recipe's geometry. Every backbone
tensor must come from the checkpoint; its heads may be absent, they are not used. The model's pooled features
(`model.features`, the mean of the non-cls output tokens) embed two labelled splits once
(`mfvideo.evaluation.probe.embed_split`):

    train   `data.probe_train` (else `data.train`): one view per video, the middle clip, centre crop
    val     `data.probe_val` (else `data.val`): `data.test_clips` temporal views × the centre crop, as tools/test.py
            takes them (`data.test_crops` is not used), the views' features averaged per video

and both scorers run on those features alone, identically on every rank (every rank holds both full splits), so
any number of processes gives the same metrics:

    knn_*      the weighted vote of the `train.probe_k` nearest train videos, `train.probe_temperature`, on
               standardised features (`mfvideo.evaluation.probe.standardised`, `knn_scores`)
    linear_*   a logistic regression fitted on the standardised train features by L-BFGS
               (`mfvideo.evaluation.linear_probe`)

Rank 0 writes `<train.output_dir>/probe/`: `metrics.json` (knn_top1, knn_top5, linear_top1, linear_top5 in percent,
linear_train_top1, the video and class counts, the feature width, k, temperature, the linear probe's settings and
the checkpoint), `predictions.jsonl` (one row per val video in video order: `key`, `label`, and `linear_top5` and
`knn_top5`, each a list of [class index, class name, score] best first, tools/test.py's layout; the score is the
linear probe's softmax probability or the k-NN vote's share of the votes) and `recipe.yaml`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from mfvideo.app.run import recipe_error
from mfvideo.common.log import setup_logging
from mfvideo.config import Recipe, load_recipe_or_exit, recipe_to_yaml, save_recipe
from mfvideo.data.loader import build_test_loader, read_policy
from mfvideo.data.shardlist import expand_pattern, list_shards, manifest_location, read_split_manifest
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.engine.distributed import init_distributed
from mfvideo.engine.trainer import uses_bf16
from mfvideo.evaluation.classification import TOP_K, write_results
from mfvideo.evaluation.linear_probe import L2_PENALTY, MAX_ITERATIONS, fit_linear_probe
from mfvideo.evaluation.probe import EmbeddedSplit, embed_split, knn_scores, standardised, topk_accuracy
from mfvideo.models.checkpoint import LoadReport, load_pretrained
from mfvideo.tasks import Views, build_model, classify
from mfvideo.tasks.rules import choice_problems

log = logging.getLogger("mfvideo.probe")

# Tasks whose model has `features(video)`: MaskFeat (pretraining recipes) and the classifier (fine-tuning ones).
PROBED_TASKS = ("pretrain", "classify")


@dataclass(frozen=True)
class ProbeSplit:
    """One labelled split of the probe, with the recipe key that named it (for messages)."""

    key: str  # data.probe_train, data.train, data.probe_val or data.val
    pattern: str
    manifest: str | None  # the explicit manifest key's value; None: beside the shards

    def manifest_file(self) -> str:
        """Where its manifest is read from, as `mfvideo.data.shardlist` finds it."""
        if self.manifest:
            return self.manifest
        if "://" not in self.pattern and os.path.isdir(self.pattern):
            return os.path.join(self.pattern, "manifest.json")
        return manifest_location(expand_pattern(self.pattern), None)


def probe_splits(recipe: Recipe) -> tuple[ProbeSplit, ProbeSplit | None]:
    """(train, val) of the probe: `data.probe_train` / `data.probe_val` when set, else `data.train` / `data.val`;
    val is None when neither is set."""
    data = recipe.data
    if data.probe_train:
        train = ProbeSplit("data.probe_train", data.probe_train, data.probe_train_manifest)
    else:
        train = ProbeSplit("data.train", data.train, data.train_manifest)
    if data.probe_val:
        return train, ProbeSplit("data.probe_val", data.probe_val, data.probe_val_manifest)
    return train, ProbeSplit("data.val", data.val, data.val_manifest) if data.val else None


def probe_split_problems(recipe: Recipe) -> list[str]:
    """What stops the probe's splits before any work, each naming its key and file: a val split not set, shards or
    manifests missing (or not the size their manifest lists), a manifest without classes (shards without labels),
    fewer than 2 classes, or train and val manifests whose class lists differ."""
    train, val = probe_splits(recipe)
    problems = []
    if val is None:
        problems.append("data.probe_val (or data.val) is not set: name the labelled shards to score the probe on")
    classes: dict[str, list[str]] = {}
    for split in (train, val) if val else (train,):
        try:
            list_shards(split.pattern, split.manifest, read_policy(recipe.data))
            classes[split.key] = list(
                read_split_manifest(split.pattern, split.manifest, read_policy(recipe.data)).get("classes") or []
            )
        except (OSError, ValueError) as err:
            problems.append(f"{split.key}={split.pattern!r}: {err}")
            continue
        if not any(classes[split.key]):
            problems.append(
                f"{split.key}={split.pattern!r}: its manifest {split.manifest_file()!r} lists no "
                f"classes: the shards carry no labels to probe with"
            )
        elif len(classes[split.key]) < 2:
            problems.append(
                f"{split.key}={split.pattern!r}: its manifest {split.manifest_file()!r} lists "
                f"{len(classes[split.key])} class: a probe needs at least 2"
            )
    if val and all(classes.get(split.key) for split in (train, val)):
        ours, theirs = classes[train.key], classes[val.key]
        if ours != theirs:
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            problems.append(
                f"{val.key}={val.pattern!r}: its manifest {val.manifest_file()!r} lists other classes "
                f"than {train.key}'s {train.manifest_file()!r} ({len(theirs)} and {len(ours)} classes; "
                f"first difference at index {first}: "
                f"{theirs[first] if first < len(theirs) else None!r} and "
                f"{ours[first] if first < len(ours) else None!r}); both splits must label alike"
            )
    return problems


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of everything outside the backbone (heads, MaskFeat's mask token)."""
    return tuple(
        sorted(
            {
                key.split(".")[0] + ("." if "." in key else "")
                for key in model.state_dict()
                if not key.startswith("backbone.")
            }
        )
    )


def probe_model(recipe: Recipe) -> tuple[nn.Module, LoadReport]:
    """The recipe's model with the weights of `model.init` (which must be set), on the CPU, and what was loaded:
    every backbone tensor must come from the checkpoint (a ValueError naming the file and the missing tensors
    otherwise); heads may be absent, or of another class count."""
    model = build_model(replace(recipe.model, init=None), recipe.data.num_frames, recipe.data.crop_size)
    if not hasattr(model, "features"):
        raise ValueError(f"model.task={recipe.model.task!r}: its model has no pooled features to probe")
    try:
        report = load_pretrained(model, recipe.model.init, allowed_missing=_head_prefixes(model))
    except ValueError as err:
        raise ValueError(f"model.init: the probe needs every backbone tensor: {err}") from None
    return model, report


def _top_classes(scores: torch.Tensor, class_names: list[str]) -> list[list[list[Any]]]:
    """Per row of Q×C `scores` (rows summing to 1): [class index, class name, score] of its top min(5, C) classes,
    best first; among equal scores the lower class index first (as `topk_accuracy` ranks them)."""
    top = min(TOP_K, scores.shape[1])
    ordered = torch.sort(scores.cpu(), dim=1, descending=True, stable=True)
    return [
        [[c, class_names[c], s] for c, s in zip(classes[:top], values[:top])]
        for classes, values in zip(ordered.indices.tolist(), ordered.values.tolist())
    ]


def _embed(model: nn.Module, loader, autocast_dtype: torch.dtype | None) -> EmbeddedSplit:
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return embed_split(model, loader)


def run_linear_and_knn_probe(recipe: Recipe, local_rank: int | None = None) -> dict:
    """The probe metrics of `model.init` (module docstring), the same on every rank; rank 0 writes them with the
    predictions and the recipe to `<train.output_dir>/probe/`. Raises ValueError for weights that do not fit the
    backbone, before any process group."""
    model, report = probe_model(recipe)
    info = init_distributed(local_rank)
    setup_logging(rank=info.rank, world_size=info.world_size)
    log.info("%s: %s", recipe.model.init, report.summary())  # loaded before logging was set up
    out_dir = Path(recipe.train.output_dir) / "probe"
    if info.is_main:
        log.info("resolved recipe:\n%s", recipe_to_yaml(recipe))
        save_recipe(recipe, out_dir)
    model.to(info.device)
    train_split, val_split = probe_splits(recipe)
    assert val_split is not None, "tools/probe.py checks that a val split is set before the run"
    class_names = list(
        read_split_manifest(train_split.pattern, train_split.manifest, read_policy(recipe.data))["classes"]
    )
    num_classes = len(class_names)
    micro = recipe.train.micro_batch_size
    autocast_dtype = torch.bfloat16 if uses_bf16(recipe) else None
    log.info(
        "probing %s: %s=%s (1 view per video) → %s=%s (%d temporal view(s) per video), %d classes, %d process(es)",
        recipe.model.init,
        train_split.key,
        train_split.pattern,
        val_split.key,
        val_split.pattern,
        recipe.data.test_clips,
        num_classes,
        info.world_size,
    )
    # The train split's single view is the middle clip, centre crop: the neighbours and the linear probe's training
    # set see one clip per video, as k-NN monitors of self-supervised models do; the val views follow tools/test.py.
    placement = Placement(info.rank, info.world_size, recipe.data.num_workers)
    train, val = (
        _embed(
            model,
            build_test_loader(
                recipe.data,
                ShardSplit(split.pattern, split.manifest, read_policy(recipe.data)),
                classify.eval_batching(recipe, Views(clips, 1)),
                micro,
                placement,
            ),
            autocast_dtype,
        )
        for split, clips in ((train_split, 1), (val_split, recipe.data.test_clips))
    )
    log.info(
        "embedded %d train and %d val videos into %d features", len(train.keys), len(val.keys), train.features.shape[1]
    )

    k, temperature = recipe.train.probe_k, recipe.train.probe_temperature
    train_features, val_features = standardised(train.features, val.features.to(info.device))
    knn = knn_scores(train_features, train.labels, val_features, num_classes, k, temperature)
    knn = knn / knn.sum(dim=1, keepdim=True)  # shares of the vote: the same ranking, a readable score
    linear_probe = fit_linear_probe(train.features, train.labels, num_classes, device=info.device)
    log.info("linear probe: %d L-BFGS iteration(s), objective %.4g", linear_probe.iterations, linear_probe.train_loss)
    linear = linear_probe.scores(val.features)
    metrics: dict[str, Any] = {
        **{f"knn_{name}": value for name, value in topk_accuracy(knn, val.labels).items()},
        **{f"linear_{name}": value for name, value in topk_accuracy(linear, val.labels).items()},
        "linear_train_top1": topk_accuracy(linear_probe.scores(train.features), train.labels, (1,))["top1"],
        "num_train_videos": len(train.keys),
        "num_val_videos": len(val.keys),
        "num_val_views": recipe.data.test_clips,
        "num_classes": num_classes,
        "feature_dim": int(train.features.shape[1]),
        "k": k,
        "temperature": temperature,
        "linear_l2_penalty": L2_PENALTY,
        "linear_max_iterations": MAX_ITERATIONS,
        "checkpoint": recipe.model.init,
    }
    if info.is_main:
        predictions = [
            {"key": key, "label": label, "linear_top5": linear_top, "knn_top5": knn_top}
            for key, label, linear_top, knn_top in zip(
                val.keys, val.labels.tolist(), _top_classes(linear, class_names), _top_classes(knn, class_names)
            )
        ]
        write_results(out_dir, metrics, predictions)
        log.info(
            "probe metrics (%s): knn top1 %.2f top5 %.2f, linear top1 %.2f top5 %.2f",
            out_dir / "metrics.json",
            metrics["knn_top1"],
            metrics["knn_top5"],
            metrics["linear_top1"],
            metrics["linear_top5"],
        )
    dist.barrier()
    return metrics


def run_probe(recipe_path: str, overrides: Sequence[str], local_rank: int | None = None) -> None:
    """Entry point of tools/probe.py: a pretraining or classification recipe, a checkpoint to probe, and labelled
    probe splits with the same classes, all checked before any process group or data; weights that leave a backbone
    tensor missing exit 2 naming it."""
    recipe = load_recipe_or_exit(recipe_path, overrides)
    problems = choice_problems(recipe)
    if recipe.model.task not in PROBED_TASKS:
        problems.append(
            f"model.task={recipe.model.task!r}: the probe scores video features; use a pretraining or "
            f"classification recipe ({', '.join(PROBED_TASKS)})"
        )
    if not recipe.model.init:
        problems.append("model.init is not set: name the weights to probe (e.g. model.init=outputs/run/model.pt)")
    elif not Path(recipe.model.init).is_file():
        problems.append(f"model.init={recipe.model.init!r}: no such checkpoint file")
    problems += probe_split_problems(recipe)
    if problems:
        recipe_error(recipe_path, problems)
    try:
        run_linear_and_knn_probe(recipe, local_rank)
    except (FileNotFoundError, ValueError) as err:  # weights that do not fit the backbone, unreadable checkpoint
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
