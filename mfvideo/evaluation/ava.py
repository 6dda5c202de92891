"""AVA action detection: frame-level PASCAL VOC average precision at IoU 0.5, scored as the official evaluation does
(ActivityNet `Evaluation/get_ava_performance.py` with its `PascalDetectionEvaluator`, in the version that takes
excluded timestamps, used for AVA v2.1/v2.2 and by PySlowFast), and the engine evaluator that writes a model's
detections in the official CSV format and scores them.

`score_detections` applies, in this order:
1. Only the actions of the label map count (AVA v2.2 is evaluated on the 60 of
   `ava_action_list_v2.2_for_activitynet_2019.pbtxt`): ground truth and detections of other actions are dropped.
   Action ids outside `LabelMap.known_actions` are errors.
2. Excluded keyframes count for nothing: their ground truth and their detections are dropped.
3. Per keyframe, the `max_detections_per_keyframe` highest-scoring (box, action) detections are kept (50: the
   official cap; 0 keeps all of them, as PySlowFast's evaluation does), then detections without area (x1 = x2 or
   y1 = y2) are dropped, as the official code does after the cap.
4. Per keyframe and action, in descending score order: a detection goes to the ground-truth box of its action it
   overlaps most (the first of equal ones); it is a true positive when that IoU is ≥ 0.5 and the box is not yet
   taken, else a false positive. So a duplicate is a false positive, and so is a detection whose best box is taken
   even if another box overlaps it by 0.5 (PASCAL VOC). AVA has no 'difficult' or 'group-of' boxes. Detections on
   a keyframe without ground truth (and not excluded) are false positives.
5. Per action with ground truth, all its detections in descending score order: AP = area under the precision
   envelope (precision made non-increasing from the right) over every recall step (VOC 2010+, all points). An
   action without ground truth is left out of the means; one with ground truth and no detection has AP 0.
6. `mAP` = mean AP over the actions with ground truth; `mAP_<group>` the same over the actions of each group of
   `mfvideo.common.ava_files.GROUPS` that has any. Percent, as AVA results are reported.

Where the official code leaves the order of equal scores to numpy's sort or to a heap, the order here is: within a
keyframe, the earlier row first (also for which equal scores the cap keeps); across keyframes, keyframes in
(video_id, timestamp) order. Later versions of the official script (2020, for data files that list empty keyframes
instead of excluding timestamps) ignore detections on keyframes absent from the ground truth; this one counts them,
with the excluded-timestamps file deciding what is left out, as the AVA v2.2 evaluation does.

`AvaEvaluator` (engine protocol, `mfvideo.engine.evaluate`) collects each RoI's normalised box and its scores for the
label map's actions per sample `key` (a repeated key is counted once), gathers them over ranks, and scores them with
`score_detections` against the ground-truth CSV; `write` writes them as `detections.csv` (one row per RoI and action
of the label map), with `metrics.json` and the per-action APs. Boxes and scores are rounded to the 6 decimals the CSV
holds before scoring, so `tools/ava_eval.py` on the written file gives the same numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np
import torch
import torch.distributed as dist

from mfvideo.common.ava_files import (
    GROUPS,
    Keyframe,
    LabelMap,
    read_action_detections,
    read_annotations,
    read_excluded,
    read_label_map,
)
from mfvideo.common.fileio import fsync_dir, write_atomic
from mfvideo.data import fields
from mfvideo.data.fields import check_batch

IOU_THRESHOLD = 0.5
# The official get_ava_performance.py keeps the 50 highest-scoring rows of each keyframe (since March 2019).
MAX_DETECTIONS_PER_KEYFRAME = 50
DECIMALS = 6  # of boxes and scores in a written detections CSV
DETECTIONS_FILE = "detections.csv"


class KeyframeTruth(NamedTuple):
    boxes: np.ndarray  # M×4 float64, x1, y1, x2, y2 normalised
    actions: np.ndarray  # M int64 action ids


class KeyframeDetections(NamedTuple):
    boxes: np.ndarray  # N×4 float64, x1, y1, x2, y2 normalised
    actions: np.ndarray  # N int64 action ids
    scores: np.ndarray  # N float64


@dataclass(frozen=True)
class ActionResult:
    average_precision: Optional[float]  # percent; None for an action without ground truth
    num_truth: int  # ground-truth boxes scored
    num_detections: int  # detections scored (after the cap)


@dataclass(frozen=True)
class AvaResult:
    label_map: LabelMap
    per_action: dict[int, ActionResult]  # every action of the label map, ascending id
    num_keyframes: int  # keyframes with ground truth of the label map's actions, not excluded
    num_detected_keyframes: int  # keyframes with scored detections

    def metrics(self) -> dict[str, Any]:
        """mAP and mAP_<group> in percent (groups without ground truth left out), and what they cover."""
        scored = [r.average_precision for r in self.per_action.values() if r.average_precision is not None]
        metrics: dict[str, Any] = {
            "mAP": _mean(scored),
            "num_actions": len(scored),
            "num_keyframes": self.num_keyframes,
            "num_detected_keyframes": self.num_detected_keyframes,
        }
        metrics.update((f"mAP_{group}", _mean(values)) for group, values in self._group_aps().items())
        return metrics

    def _group_aps(self) -> dict[str, list[float]]:
        """The APs of the actions with ground truth, per group that has any, in GROUPS order."""
        groups: dict[str, list[float]] = {group: [] for group in GROUPS.values()}
        for action, result in self.per_action.items():
            if result.average_precision is not None and action in self.label_map.groups:
                groups[self.label_map.groups[action]].append(result.average_precision)
        return {group: values for group, values in groups.items() if values}

    def per_action_json(self) -> dict[str, dict[str, Any]]:
        """{action id: name, group, AP in percent (null without ground truth), counts}, ascending id."""
        return {
            str(action): {
                "name": self.label_map.names[action],
                "group": self.label_map.groups.get(action),
                "ap": result.average_precision,
                "num_ground_truth": result.num_truth,
                "num_detections": result.num_detections,
            }
            for action, result in self.per_action.items()
        }

    def summary_lines(self) -> list[str]:
        """What tools/ava_eval.py prints: one line per group, the counts, and `mAP@0.5 <value>` last."""
        metrics = self.metrics()
        lines = [
            f"{group} mAP@0.5 {metrics[f'mAP_{group}']:.4f} ({len(values)} actions)"
            for group, values in self._group_aps().items()
        ]
        lines.append(
            f"{metrics['num_actions']} of {len(self.per_action)} actions have ground truth; "
            f"{self.num_keyframes} keyframes with ground truth, {self.num_detected_keyframes} with "
            f"detections"
        )
        lines.append(f"mAP@0.5 {metrics['mAP']:.4f}")
        return lines


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


# ----- scoring ----------------------------------------------------------------------------------------------------
class _Rows(NamedTuple):
    """The rows of many keyframes in one set of arrays; `owner` is each row's keyframe index."""

    owner: np.ndarray
    boxes: np.ndarray
    actions: np.ndarray
    scores: Optional[np.ndarray]


def _stack(
    items: Mapping[Keyframe, Any], keyframes: list[Keyframe], index: dict[Keyframe, int], known: range, scored: bool
) -> _Rows:
    """The rows of `items` (KeyframeTruth, or KeyframeDetections when `scored`) in keyframe order, `owner` indexing
    `keyframes`; checked as the file readers check rows, errors naming the keyframe."""
    owners, boxes, actions, scores = [], [], [], []
    for keyframe in sorted(items):
        item = items[keyframe]
        count = len(item.actions)
        if (
            np.shape(item.boxes) != (count, 4)
            or np.shape(item.actions) != (count,)
            or (scored and np.shape(item.scores) != (count,))
        ):
            raise ValueError(
                f"keyframe {keyframe}: boxes {np.shape(item.boxes)}, actions {np.shape(item.actions)}"
                + (f", scores {np.shape(item.scores)}" if scored else "")
                + " do not match (N×4, N, N)"
            )
        owners.append(np.full(count, index[keyframe]))
        boxes.append(item.boxes)
        actions.append(item.actions)
        if scored:
            scores.append(item.scores)
    rows = _Rows(
        np.concatenate([np.zeros(0), *owners]).astype(np.int64),
        np.concatenate([np.zeros((0, 4)), *boxes]).astype(np.float64),
        np.concatenate([np.zeros(0), *actions]).astype(np.int64),
        np.concatenate([np.zeros(0), *scores]).astype(np.float64) if scored else None,
    )
    x1, y1, x2, y2 = rows.boxes.T
    checks = [
        (
            ~((0 <= x1) & (x1 <= x2) & (x2 <= 1) & (0 <= y1) & (y1 <= y2) & (y2 <= 1)),
            lambda i: f"box {rows.boxes[i].tolist()} is not normalised x1<=x2, y1<=y2 in [0, 1]",
        ),
        (
            (rows.actions < known.start) | (rows.actions >= known.stop),
            lambda i: f"unknown action id {rows.actions[i]} (known: {known.start}..{known.stop - 1})",
        ),
    ]
    if scored:
        checks.append((~np.isfinite(rows.scores), lambda i: f"score {rows.scores[i]} is not a finite number"))
    for bad, message in checks:
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(f"keyframe {keyframes[rows.owner[first]]}: {message(first)}")
    return rows


def _select(rows: _Rows, keep: np.ndarray) -> _Rows:
    return _Rows(*(None if field is None else field[keep] for field in rows))


def _pair_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of boxes[i] and others[i] (x1, y1, x2, y2), computed as the official np_box_ops.iou."""
    width = np.maximum(0.0, np.minimum(boxes[:, 2], others[:, 2]) - np.maximum(boxes[:, 0], others[:, 0]))
    height = np.maximum(0.0, np.minimum(boxes[:, 3], others[:, 3]) - np.maximum(boxes[:, 1], others[:, 1]))
    intersection = height * width
    area = (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])
    other_area = (others[:, 3] - others[:, 1]) * (others[:, 2] - others[:, 0])
    return intersection / (area + other_area - intersection)


def _true_positives(detected: _Rows, truth: _Rows) -> np.ndarray:
    """Which detections (sorted by keyframe, then descending score) are true positives, by rule 4 of the module
    docstring: each is paired with every ground-truth box of its keyframe and action, keeps the best pair (the
    first of equal ones, boxes in file order), and is a hit at IoU ≥ 0.5; a box is taken by the first hit choosing
    it, later hits choosing it are false."""
    stride = int(max(detected.actions.max(initial=0), truth.actions.max(initial=0))) + 1
    truth_order = np.lexsort((np.arange(len(truth.owner)), truth.actions, truth.owner))
    truth_keys = (truth.owner * stride + truth.actions)[truth_order]
    detected_keys = detected.owner * stride + detected.actions
    first = np.searchsorted(truth_keys, detected_keys, side="left")
    counts = np.searchsorted(truth_keys, detected_keys, side="right") - first
    pair_detection = np.repeat(np.arange(len(counts)), counts)
    pair_starts = np.cumsum(counts) - counts
    pair_truth = truth_order[first[pair_detection] + np.arange(len(pair_detection)) - pair_starts[pair_detection]]
    overlaps = _pair_iou(detected.boxes[pair_detection], truth.boxes[pair_truth])

    positive = np.zeros(len(counts), dtype=bool)
    paired = np.flatnonzero(counts)
    if not len(paired):
        return positive
    best_overlap = np.maximum.reduceat(overlaps, pair_starts[paired])
    is_best = overlaps == np.repeat(best_overlap, counts[paired])
    best_pair = np.minimum.reduceat(np.where(is_best, np.arange(len(overlaps)), len(overlaps)), pair_starts[paired])
    is_hit = best_overlap >= IOU_THRESHOLD
    # Hits are in keyframe-then-score order, so the first hit choosing a box is the one that takes it.
    _, taking = np.unique(pair_truth[best_pair[is_hit]], return_index=True)
    positive[paired[is_hit][taking]] = True
    return positive


def _average_precision(positive: np.ndarray, num_truth: int) -> float:
    """VOC all-points AP (a fraction) of detections in descending score order."""
    if not len(positive):
        return 0.0
    true_positives = np.cumsum(positive)
    precision = true_positives / np.arange(1, len(positive) + 1)
    recall = true_positives / num_truth
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def score_detections(
    truth: Mapping[Keyframe, KeyframeTruth],
    detections: Mapping[Keyframe, KeyframeDetections],
    label_map: LabelMap,
    excluded=frozenset(),
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
) -> AvaResult:
    """Per-action AP and means of `detections` against `truth` (see the module docstring)."""
    if max_detections_per_keyframe < 0:
        raise ValueError(f"max_detections_per_keyframe must be ≥ 0 (0 keeps all), got {max_detections_per_keyframe}")
    actions = np.array(list(label_map.names))
    keyframes = sorted(set(truth) | set(detections))
    index = {keyframe: number for number, keyframe in enumerate(keyframes)}
    is_excluded = np.array([keyframe in excluded for keyframe in keyframes], dtype=bool)

    true_rows = _stack(truth, keyframes, index, label_map.known_actions, scored=False)
    true_rows = _select(true_rows, np.isin(true_rows.actions, actions) & ~is_excluded[true_rows.owner])
    labels, num_truth = np.unique(true_rows.actions, return_counts=True)
    if not len(labels):
        raise ValueError(f"no ground truth of the label map's {len(actions)} actions outside the excluded keyframes")

    found = _stack(detections, keyframes, index, label_map.known_actions, scored=True)
    rows = np.flatnonzero(np.isin(found.actions, actions) & ~is_excluded[found.owner])
    # Per keyframe, descending score, the earlier row first (rows are in keyframe order already).
    rows = rows[np.lexsort((rows, -found.scores[rows], found.owner[rows]))]
    if max_detections_per_keyframe:
        owner = found.owner[rows]
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        rank = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        rows = rows[rank < max_detections_per_keyframe]
    boxes = found.boxes[rows]
    scored = _select(found, rows[(boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])])
    positive = _true_positives(scored, true_rows)

    # Per action, descending score; equal scores keep the keyframe-then-row order gathered above.
    order = np.lexsort((np.arange(len(scored.scores)), -scored.scores, scored.actions))
    sorted_actions, positive = scored.actions[order], positive[order]
    starts = np.searchsorted(sorted_actions, actions, side="left")
    ends = np.searchsorted(sorted_actions, actions, side="right")
    counts = dict(zip(labels.tolist(), num_truth.tolist()))
    per_action = {}
    for action, start, end in zip(label_map.names, starts, ends):
        count = counts.get(action, 0)
        ap = 100.0 * _average_precision(positive[start:end], count) if count else None
        per_action[action] = ActionResult(ap, count, int(end - start))
    return AvaResult(label_map, per_action, len(np.unique(true_rows.owner)), len(np.unique(scored.owner)))


# ----- files ------------------------------------------------------------------------------------------------------
def read_ground_truth(path: str, label_map: LabelMap) -> dict[Keyframe, KeyframeTruth]:
    """A ground-truth CSV as per-keyframe arrays (every row a box, duplicates included, as the official code)."""
    rows: dict[Keyframe, array] = defaultdict(lambda: array("d"))
    for row in read_annotations(path, label_map.known_actions):
        rows[row.keyframe].extend((*row.box, row.action))
    tables = {keyframe: np.frombuffer(values).reshape(-1, 5) for keyframe, values in rows.items()}
    return {keyframe: KeyframeTruth(table[:, :4], table[:, 4].astype(np.int64)) for keyframe, table in tables.items()}


def read_detections(path: str, label_map: LabelMap) -> dict[Keyframe, KeyframeDetections]:
    """An action-detections CSV as per-keyframe arrays, rows in file order."""
    rows: dict[Keyframe, array] = defaultdict(lambda: array("d"))
    for row in read_action_detections(path, label_map.known_actions):
        rows[row.keyframe].extend((*row.box, row.action, row.score))
    tables = {keyframe: np.frombuffer(values).reshape(-1, 6) for keyframe, values in rows.items()}
    return {
        keyframe: KeyframeDetections(table[:, :4], table[:, 4].astype(np.int64), table[:, 5])
        for keyframe, table in tables.items()
    }


def write_detections(path: str | Path, detections: Mapping[Keyframe, KeyframeDetections]) -> None:
    """The official CSV `video_id,timestamp,x1,y1,x2,y2,action_id,score`, keyframes in order, timestamps with 4 digits
    as AVA writes them, boxes and scores with DECIMALS decimals; written to a temporary file renamed when complete."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    number = f"{{:.{DECIMALS}f}}"
    line = f"{{}},{number},{number},{number},{number},{{}},{number}\n".format
    with open(tmp, "w", newline="") as handle:
        for video_id, timestamp in sorted(detections):
            item = detections[video_id, timestamp]
            keyframe = f"{_csv_field(video_id)},{timestamp:04d}"
            handle.write(
                "".join(
                    line(keyframe, *box, action, score)
                    for box, action, score in zip(item.boxes.tolist(), item.actions.tolist(), item.scores.tolist())
                )
            )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _csv_field(text: str) -> str:
    """`text` as one CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def ap_json_path(detections: str | Path) -> Path:
    """Where the per-action APs of a detections CSV go: beside it, `<stem>_ap.json`."""
    detections = Path(detections)
    return detections.with_name(detections.stem + "_ap.json")


def _write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2) + "\n").encode())


def evaluate_files(
    groundtruth: str,
    detections: str,
    labelmap: str,
    exclusions: Optional[str] = None,
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
) -> AvaResult:
    """Score a detections CSV against a ground-truth CSV (files as `mfvideo.common.ava_files` describes them)."""
    label_map = read_label_map(labelmap)
    truth = read_ground_truth(groundtruth, label_map)
    excluded = read_excluded(exclusions) if exclusions else set()
    return score_detections(
        truth, read_detections(detections, label_map), label_map, excluded, max_detections_per_keyframe
    )


# ----- engine evaluator -------------------------------------------------------------------------------------------
def _rounded(values: np.ndarray) -> np.ndarray:
    """float64 values equal to what DECIMALS decimals print and parse back to (the nearest double of k·10^-DECIMALS);
    + 0.0 turns −0 into 0."""
    scale = 10.0**DECIMALS
    return np.rint(values.astype(np.float64) * scale) / scale + 0.0


# The batch keys `AvaEvaluator.update` reads (mfvideo.data.fields).
READS = (fields.SAMPLE_KEY, fields.BOX_INDEX, fields.BOX_NORM, fields.VIDEO_ID, fields.TIMESTAMP)


class AvaEvaluator:
    """Collects one detection pass; see the module docstring. `primary` is the metric that picks the best
    checkpoint during training. With `tested_keyframes_only`, ground truth of keyframes no sample came from is left
    out (a validation pass over a subset of the seconds); by default all of it counts, so a keyframe the loader
    missed counts as missed, as in the official evaluation."""

    primary = "mAP"

    def __init__(
        self,
        groundtruth: str,
        label_map: str,
        exclusions: Optional[str] = None,
        max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
        tested_keyframes_only: bool = False,
    ):
        self.label_map = read_label_map(label_map)
        self._label_map_path = label_map
        self.truth = read_ground_truth(groundtruth, self.label_map)
        self.excluded = read_excluded(exclusions) if exclusions else set()
        self.max_detections_per_keyframe = max_detections_per_keyframe
        self.tested_keyframes_only = tested_keyframes_only
        self._actions = np.array(list(self.label_map.names), dtype=np.int64)
        self._columns = torch.from_numpy(self._actions - 1)  # column a−1 of the model's scores is action id a
        # key -> (keyframe, boxes R×4 float32, scores R×C float32 for the label map's C actions)
        self._samples: dict[str, tuple[Keyframe, np.ndarray, np.ndarray]] = {}
        self._detections: Optional[dict[Keyframe, KeyframeDetections]] = None
        self._result: Optional[AvaResult] = None

    def update(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Add a detection batch (`key`, `video_id`, `timestamp` per clip; `box_index`, `box_norm` per RoI) and the
        model's `outputs["scores"]` (R×A probabilities, column a−1 = action id a)."""
        check_batch(batch, READS, "AvaEvaluator")
        scores = outputs["scores"].detach().to("cpu", torch.float32)
        box_index = batch[fields.BOX_INDEX.name].detach().cpu()
        box_norm = batch[fields.BOX_NORM.name].detach().to("cpu", torch.float32)
        keys, video_ids = list(batch[fields.SAMPLE_KEY.name]), list(batch[fields.VIDEO_ID.name])
        timestamps = batch[fields.TIMESTAMP.name].tolist()
        num_rois = len(box_index)
        if scores.ndim != 2 or scores.shape[0] != num_rois or tuple(box_norm.shape) != (num_rois, 4):
            raise ValueError(
                f"scores {tuple(scores.shape)}, box_norm {tuple(box_norm.shape)} and box_index "
                f"({num_rois}) disagree: expected R×A, R×4 and R"
            )
        if scores.shape[1] < int(self._actions[-1]):
            raise ValueError(
                f"the model scores {scores.shape[1]} actions but the label map {self._label_map_path} "
                f"has action id {int(self._actions[-1])}"
            )
        if not len(keys) == len(video_ids) == len(timestamps):
            raise ValueError(
                f"batch fields disagree on the number of clips: {len(keys)} key, {len(video_ids)} "
                f"video_id, {len(timestamps)} timestamp"
            )
        if num_rois and not (0 <= int(box_index.min()) and int(box_index.max()) < len(keys)):
            raise ValueError(f"box_index {box_index.tolist()} names clips outside the batch's {len(keys)}")
        action_scores = scores[:, self._columns]
        for clip, (key, video_id, timestamp) in enumerate(zip(keys, video_ids, timestamps)):
            keyframe = (str(video_id), int(timestamp))
            if key in self._samples:
                if self._samples[key][0] != keyframe:
                    raise ValueError(f"sample {key!r} arrived as keyframe {self._samples[key][0]} and as {keyframe}")
                continue  # a repeat of a sample already counted
            rows = box_index == clip
            self._samples[key] = (keyframe, box_norm[rows].numpy().copy(), action_scores[rows].numpy().copy())
        self._detections = self._result = None

    def compute(self) -> dict[str, Any]:
        """The metrics over every sample of every rank. Collective under torch.distributed with several processes
        (every rank must call it); the same dict on every rank."""
        local = [(key, *sample) for key, sample in self._samples.items()]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        # Checked after the gather, on the same data everywhere: every rank raises the same error, none waits.
        samples: dict[str, tuple[Keyframe, np.ndarray, np.ndarray]] = {}
        owners: dict[Keyframe, str] = {}
        for part in gathered:
            for key, keyframe, boxes, scores in part:
                if key in samples:
                    continue
                if keyframe in owners:
                    raise ValueError(f"keyframe {keyframe} arrived as two samples, {owners[keyframe]!r} and {key!r}")
                owners[keyframe] = key
                samples[key] = (keyframe, boxes, scores)
        if not samples:
            raise ValueError("no keyframe was tested: the evaluator received no sample")
        num_actions = len(self._actions)
        self._detections = {
            keyframe: KeyframeDetections(
                np.repeat(_rounded(boxes), num_actions, axis=0),
                np.tile(self._actions, len(boxes)),
                _rounded(scores).reshape(-1),
            )
            for keyframe, boxes, scores in samples.values()
        }
        truth = (
            {keyframe: self.truth[keyframe] for keyframe in owners if keyframe in self.truth}
            if self.tested_keyframes_only
            else self.truth
        )
        self._result = score_detections(
            truth, self._detections, self.label_map, self.excluded, self.max_detections_per_keyframe
        )
        return self._result.metrics()

    def write(self, directory: str | Path, metrics: dict[str, Any]) -> None:
        """`detections.csv`, `metrics.json` and `detections_ap.json` (per-action APs) in `directory` (after
        `compute`)."""
        if self._result is None or self._detections is None:
            raise RuntimeError("write() needs compute() first (and again after any update)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_detections(directory / DETECTIONS_FILE, self._detections)
        _write_json(directory / "metrics.json", dict(sorted(metrics.items())))
        _write_json(ap_json_path(directory / DETECTIONS_FILE), self._result.per_action_json())


# ----- command line -----------------------------------------------------------------------------------------------
def main(argv: Optional[list[str]] = None) -> int:
    """tools/ava_eval.py: prints the group means and `mAP@0.5 <value>` last, writes the per-action APs beside the
    detections; a malformed or unreadable input exits with code 2 and a message naming the file (and line)."""
    parser = argparse.ArgumentParser(
        prog="ava_eval.py",
        description="Frame-level AVA mAP@0.5 (PASCAL VOC AP per action, as the official ActivityNet evaluation) of a "
        "detections CSV video_id,timestamp,x1,y1,x2,y2,action_id,score against a ground-truth CSV. "
        "Prints pose/object/interaction means and 'mAP@0.5 <percent>' as the last line, and writes the "
        "per-action APs as JSON beside the detections: DET.csv -> DET_ap.json.",
    )
    parser.add_argument("--groundtruth", required=True, help="ground truth, e.g. ava_val_v2.2.csv")
    parser.add_argument("--detections", required=True, help="detections CSV with a score column")
    parser.add_argument(
        "--labelmap",
        required=True,
        help="actions to score, e.g. ava_action_list_v2.2_for_activitynet_2019.pbtxt (60 actions)",
    )
    parser.add_argument("--exclusions", help="excluded keyframes, e.g. ava_val_excluded_timestamps_v2.2.csv")
    parser.add_argument(
        "--max-detections-per-keyframe",
        type=int,
        default=MAX_DETECTIONS_PER_KEYFRAME,
        help=f"keep this many highest-scoring rows per keyframe (default {MAX_DETECTIONS_PER_KEYFRAME}"
        f", as the official script; 0 keeps all, as PySlowFast's evaluation)",
    )
    args = parser.parse_args(argv)
    if args.max_detections_per_keyframe < 0:
        parser.error(f"--max-detections-per-keyframe must be ≥ 0 (0 keeps all), got {args.max_detections_per_keyframe}")
    try:
        result = evaluate_files(
            args.groundtruth, args.detections, args.labelmap, args.exclusions, args.max_detections_per_keyframe
        )
        out = ap_json_path(args.detections)
        _write_json(out, result.per_action_json())
    except (ValueError, OSError) as err:
        print(f"ava_eval: {err}", file=sys.stderr)
        return 2
    print(f"per-action AP: {out}")
    for line in result.summary_lines():
        print(line)
    return 0
