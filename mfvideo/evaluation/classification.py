"""Multi-view classification testing: per-clip softmax scores summed per video, every video counted once.

The test loader (`mfvideo.data.loader.build_test_loader`) gives every video `num_temporal_views × num_crops`
views, view id = temporal view × num_crops + crop, each batch carrying `video_index` (the video's index in pattern
order), `view`, `label` and `key`. Slots short of data repeat whole videos, so the same (video_index, view) may
arrive twice: the first to arrive is counted, repeats (the same clip again) are ignored. `ViewAggregator.update`
turns each clip's logits into float32 probabilities on the CPU; as soon as a video has all its views it is reduced
to a small `VideoResult` (top classes, and the top-1 class for each temporal view subset) and its probabilities are
dropped, so memory holds only videos still in progress. Sums run over the views in view order, so the results do not
depend on the order clips arrive in, nor on how videos are split over ranks.

`compute()` gathers the `VideoResult`s of every rank (`all_gather_object`, no large tensors) and returns the same
metrics on every rank:

    num_videos, num_views            videos and distinct views counted
    top1, top5                       percent, from the softmax scores summed over all views of each video
    mean_class_accuracy              percent, top-1 accuracy per class averaged over the classes that have videos
    top1_views_{k}                   percent, top-1 from k temporal views (all their crops; which views:
                                     `spread_temporal_views`), k in VIEW_COUNTS, k ≤ num_temporal_views

PySlowFast reports the 1/3/5/7/10-view figures from one test pass per view count (`TEST.NUM_TEMPORAL_CLIPS`), each
with its own evenly spaced clips; here they come from subsets of the one pass, so 3 of 10 views start where 3 views
of their own would only approximately start.

`top5` counts the top min(5, num_classes) classes (with 5 classes or fewer it is 100 by construction).
A video seen with only some of its views, or from two ranks, is an error naming it: the loader emits every view of a
video on one rank, so either means the loader and the aggregator disagree on the views or on the split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from mfvideo.common.fileio import write_atomic
from mfvideo.data import fields
from mfvideo.data.fields import check_batch

logger = logging.getLogger(__name__)

TOP_K = 5
VIEW_COUNTS = (1, 3, 5, 7, 10)
# Offending videos named in full in an error message; the rest are counted.
MAX_NAMED = 10


def spread_temporal_views(num_views: int, count: int) -> list[int]:
    """`count` of `num_views` evenly spaced temporal views, deterministically: split the time axis, on which view j
    covers [j, j + 1), into `count` equal parts and take the view under the centre of each part, i.e.
    floor((2i + 1)·num_views / (2·count)) for i < count. 10 views: 1 → [5], 3 → [1, 5, 8], 5 → [1, 3, 5, 7, 9],
    7 → [0, 2, 3, 5, 6, 7, 9]; count = num_views takes all."""
    if not 1 <= count <= num_views:
        raise ValueError(f"cannot choose {count} of {num_views} temporal views")
    return [(2 * part + 1) * num_views // (2 * count) for part in range(count)]


@dataclass(frozen=True)
class VideoResult:
    """What one video contributes to the metrics, small enough to gather from every rank."""

    video_index: int
    key: str
    label: int
    top_classes: tuple[int, ...]  # the top min(5, K) classes by summed probability, best first
    top_scores: tuple[float, ...]  # their probability averaged over the video's views
    view_count_top1: tuple[int, ...]  # top-1 class from spread_temporal_views(T, k), k in the aggregator's counts


@dataclass
class _PendingVideo:
    key: str
    label: int
    probabilities: dict[int, torch.Tensor]  # view -> float32 K


def video_scores(probabilities: torch.Tensor, top_k: int) -> tuple[list[int], list[float]]:
    """A video's top `top_k` classes from its V×C per-view probabilities (rows in view order), by their sum over the
    views, and their mean probability. Stable: among equal scores the lower class index ranks first (as argmax)."""
    total = probabilities.sum(dim=0)
    order = torch.sort(total, descending=True, stable=True).indices[:top_k]
    return order.tolist(), (total[order] / probabilities.shape[0]).tolist()


# The batch keys `ViewAggregator.update` reads (mfvideo.data.fields).
READS = (fields.SAMPLE_KEY, fields.LABEL, fields.VIDEO_INDEX, fields.VIEW)


class ViewAggregator:
    """Accumulates one multi-view test pass; see the module docstring for the metrics. `primary` is the metric that
    picks the best checkpoint during training."""

    primary = "top1"

    def __init__(
        self, num_classes: int, num_temporal_views: int, num_crops: int, class_names: Optional[Sequence[str]] = None
    ):
        if num_classes < 1 or num_temporal_views < 1 or num_crops < 1:
            raise ValueError(
                f"num_classes, num_temporal_views and num_crops must be positive, got {num_classes}, "
                f"{num_temporal_views}, {num_crops}"
            )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.num_classes = num_classes
        self.num_temporal_views = num_temporal_views
        self.num_crops = num_crops
        self.num_views = num_temporal_views * num_crops
        self.class_names = list(class_names) if class_names is not None else None
        self.top_k = min(TOP_K, num_classes)
        if self.top_k < TOP_K:
            logger.info("top5 counts the top %d classes: there are only %d", self.top_k, num_classes)
        self.view_counts = tuple(k for k in VIEW_COUNTS if k <= num_temporal_views)
        self._view_rows = [
            [t * num_crops + crop for t in spread_temporal_views(num_temporal_views, k) for crop in range(num_crops)]
            for k in self.view_counts
        ]
        self._pending: dict[int, _PendingVideo] = {}
        self._done: dict[int, VideoResult] = {}
        self._results: Optional[list[VideoResult]] = None

    # ----- accumulation -----------------------------------------------------------------------------------------
    def update(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Add a test batch (`video_index`, `view`, `label`, `key`) and the model's `outputs["logits"]` (B×K)."""
        check_batch(batch, READS, "ViewAggregator")
        logits = outputs["logits"].detach()
        video_indices = batch[fields.VIDEO_INDEX.name].tolist()
        views = batch[fields.VIEW.name].tolist()
        labels = batch[fields.LABEL.name].tolist()
        keys = list(batch[fields.SAMPLE_KEY.name])
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits of shape {tuple(logits.shape)}, expected (batch, {self.num_classes})")
        if not len(video_indices) == len(views) == len(labels) == len(keys) == logits.shape[0]:
            raise ValueError(
                f"batch fields disagree on the batch size: {len(video_indices)} video_index, "
                f"{len(views)} view, {len(labels)} label, {len(keys)} key, {logits.shape[0]} logits"
            )
        probabilities = torch.softmax(logits.to("cpu", torch.float32), dim=1)
        for row, (video_index, view, label, key) in enumerate(zip(video_indices, views, labels, keys)):
            if not 0 <= view < self.num_views:
                raise ValueError(
                    f"video {key!r} has view {view}, outside the {self.num_temporal_views} temporal × "
                    f"{self.num_crops} crop views of this test"
                )
            if not 0 <= label < self.num_classes:
                raise ValueError(
                    f"video {key!r} has label {label}, outside 0..{self.num_classes - 1}: test shards "
                    f"need labels of the model's classes"
                )
            known = self._done.get(video_index) or self._pending.get(video_index)
            if known is not None and (known.key, known.label) != (key, label):
                raise ValueError(
                    f"video_index {video_index} arrived as {known.key!r} (label {known.label}) and as "
                    f"{key!r} (label {label})"
                )
            if video_index in self._done:
                continue  # a repeated view of a finished video
            pending = self._pending.setdefault(video_index, _PendingVideo(key, label, {}))
            if view in pending.probabilities:
                continue
            pending.probabilities[view] = probabilities[row].clone()
            if len(pending.probabilities) == self.num_views:
                self._done[video_index] = self._summarise(video_index, self._pending.pop(video_index))
        self._results = None

    def _summarise(self, video_index: int, video: _PendingVideo) -> VideoResult:
        probabilities = torch.stack([video.probabilities[view] for view in range(self.num_views)])
        classes, scores = video_scores(probabilities, self.top_k)
        view_count_top1 = tuple(int(probabilities[rows].sum(dim=0).argmax()) for rows in self._view_rows)
        return VideoResult(video_index, video.key, video.label, tuple(classes), tuple(scores), view_count_top1)

    # ----- results ----------------------------------------------------------------------------------------------
    def compute(self) -> dict[str, Any]:
        """The metrics over every video of every rank. Collective under torch.distributed with several processes
        (every rank must call it; with NCCL the current CUDA device must be set); the same dict on every rank."""
        incomplete = [(index, video.key, sorted(video.probabilities)) for index, video in self._pending.items()]
        local = {"done": list(self._done.values()), "incomplete": incomplete}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        # Checked after the gather, on the same data everywhere: every rank raises the same error, none waits.
        results = self._check(gathered)
        self._results = results
        return self._metrics(results)

    def _check(self, gathered: list[dict[str, Any]]) -> list[VideoResult]:
        ranks: dict[int, list[int]] = {}
        keys: dict[int, str] = {}
        for rank, part in enumerate(gathered):
            for result in part["done"]:
                ranks.setdefault(result.video_index, []).append(rank)
                keys[result.video_index] = result.key
            for index, key, _ in part["incomplete"]:
                ranks.setdefault(index, []).append(rank)
                keys[index] = key
        split = sorted(index for index, owners in ranks.items() if len(owners) > 1)
        if split:
            raise ValueError(
                f"{len(split)} videos arrived from several ranks: "
                + _name_some(f"{keys[i]!r} (video_index {i}, ranks {ranks[i]})" for i in split)
            )
        incomplete = sorted((item for part in gathered for item in part["incomplete"]), key=lambda item: item[0])
        if incomplete:
            raise ValueError(
                f"{len(incomplete)} videos are missing views (each needs all {self.num_views}): "
                + _name_some(f"{key!r} (video_index {index}, views seen {seen})" for index, key, seen in incomplete)
            )
        results = sorted((result for part in gathered for result in part["done"]), key=lambda r: r.video_index)
        if not results:
            raise ValueError("no video was tested: the aggregator received no complete video")
        return results

    def _metrics(self, results: list[VideoResult]) -> dict[str, Any]:
        count = len(results)
        top1 = [r.top_classes[0] == r.label for r in results]
        per_class: dict[int, list[bool]] = {}
        for result, correct in zip(results, top1):
            per_class.setdefault(result.label, []).append(correct)
        metrics: dict[str, Any] = {
            "num_videos": count,
            "num_views": count * self.num_views,
            "top1": 100.0 * sum(top1) / count,
            "top5": 100.0 * sum(r.label in r.top_classes for r in results) / count,
            "mean_class_accuracy": 100.0 * sum(sum(c) / len(c) for c in per_class.values()) / len(per_class),
        }
        for position, k in enumerate(self.view_counts):
            metrics[f"top1_views_{k}"] = 100.0 * sum(r.view_count_top1[position] == r.label for r in results) / count
        return metrics

    def predictions(self) -> list[dict[str, Any]]:
        """One row per video in video_index order (after `compute`, on every rank): `key`, `label` and `top5`, a
        list of [class index, class name (the index without class names), mean probability over the views]."""
        if self._results is None:
            raise RuntimeError("predictions() needs compute() first (and again after any update)")
        return [
            {
                "key": r.key,
                "label": r.label,
                "top5": [
                    [c, self.class_names[c] if self.class_names else c, score]
                    for c, score in zip(r.top_classes, r.top_scores)
                ],
            }
            for r in self._results
        ]

    def write(self, directory: str | Path, metrics: dict[str, Any]) -> None:
        """The pass's `metrics.json` and `predictions.jsonl` in `directory` (after `compute`)."""
        write_results(directory, metrics, self.predictions())


def _name_some(descriptions) -> str:
    items = list(descriptions)
    named = ", ".join(items[:MAX_NAMED])
    return named + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


def write_results(directory: str | Path, metrics: dict[str, Any], predictions: list[dict[str, Any]]) -> None:
    """`metrics.json` (sorted keys, indented) and `predictions.jsonl` (one row per line) in `directory`, each written
    atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / "metrics.json", (json.dumps(metrics, sort_keys=True, indent=2) + "\n").encode())
    lines = "".join(json.dumps(row) + "\n" for row in predictions)
    write_atomic(directory / "predictions.jsonl", lines.encode())
