"""A keyframe's boxes (AVA): read and checked from its sample's JSON, and the RoIs its clips carry, with labels.

Sample fields read (shards/README.md): `video_id`, `timestamp`, `keyframe_sec`, `boxes` (ground truth, normalised
`[x1, y1, x2, y2]`), `labels` (per ground-truth box, its action ids, 1-based), and, in shards made with
`--detections`, `det_boxes` and `det_scores` (person detections). A field that breaks these rules raises
`BadAnnotation`, a `ValueError`: the stream counts and skips the sample like a video that does not decode, naming
its key and shard.

RoIs (all coordinates normalised to the keyframe's full frame, before any spatial transform):

- training (`training_rois`): every ground-truth box with its actions, plus every detection scoring at least
  `train_score`, labelled with the actions of every ground-truth box it overlaps with IoU ≥ `MATCH_IOU` (0.9) and
  with none (an all-zero row, a negative) when it overlaps none that much. This is how the official recipe's
  training detections were labelled (PySlowFast's `person_box_67091280_iou90/
  ava_detection_train_boxes_and_labels_include_negative_v2.2.csv`, rows with action id −1 for negatives; the rule
  as its authors state it: "We assign labels of a ground-truth box to a predicted box if they overlap with IoU at
  least 0.9", facebookresearch/video-long-term-feature-banks issue #4). A detection with exactly the coordinates
  of a ground-truth box is that box and is not added twice (PySlowFast merges rows with the same box).
- testing (`eval_rois`): the detections scoring at least `test_score` (`test_boxes: detections`, the protocol), or
  the ground-truth boxes (`test_boxes: ground_truth`, to measure the classifier alone as PySlowFast can). Their
  labels follow the training rule, so a validation pass can report a loss; the evaluator scores against the
  ground-truth CSV, not these labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

MATCH_IOU = 0.9  # a detection takes the actions of the ground-truth boxes it overlaps this much
TEST_BOX_SOURCES = ("detections", "ground_truth")  # data.detection.test_boxes


class BadAnnotation(ValueError):
    """A sample whose box fields break the format (the stream skips and counts it)."""


class MissingDetections(RuntimeError):
    """Testing on detections, but a sample's shard was made without them (stops the run: every sample of the shard
    would fail the same way)."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_boxes(meta: Mapping[str, Any], field: str) -> np.ndarray:
    """float64 N×4 from a list of normalised [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2 in [0, 1]."""
    value = meta[field]
    if not isinstance(value, list):
        raise BadAnnotation(f"'{field}' is {value!r:.60}, not a list of boxes")
    for index, box in enumerate(value):
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(_is_number(v) for v in box)
            and all(0.0 <= v <= 1.0 for v in box)
            and box[0] <= box[2]
            and box[1] <= box[3]
        ):
            raise BadAnnotation(
                f"'{field}'[{index}] is {box!r:.60}: not a box [x1, y1, x2, y2] normalised to [0, 1] "
                f"with x1 <= x2 and y1 <= y2"
            )
    return np.array(value, dtype=np.float64).reshape(len(value), 4)


def _read_labels(meta: Mapping[str, Any], num_boxes: int, num_actions: int) -> list[list[int]]:
    value = meta["labels"]
    if not isinstance(value, list) or len(value) != num_boxes:
        size = len(value) if isinstance(value, list) else type(value).__name__
        raise BadAnnotation(f"'labels' has {size} entries for {num_boxes} boxes: one list of action ids per box")
    for index, actions in enumerate(value):
        if not (
            isinstance(actions, list)
            and all(isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= num_actions for a in actions)
        ):
            raise BadAnnotation(f"'labels'[{index}] is {actions!r:.60}: not a list of action ids in 1..{num_actions}")
    return value


@dataclass(frozen=True)
class KeyframeAnnotation:
    video_id: str
    timestamp: int  # the keyframe's second in the movie
    time: float  # `keyframe_sec`: seconds from the clip's first frame to the keyframe
    boxes: np.ndarray  # float64 G×4, ground truth
    labels: list[list[int]]  # per ground-truth box, its action ids
    det_boxes: Optional[np.ndarray]  # float64 D×4, None when the shard was made without detections
    det_scores: Optional[np.ndarray]  # float64 D

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], num_actions: int) -> "KeyframeAnnotation":
        for field in ("video_id", "timestamp", "keyframe_sec", "boxes", "labels"):
            if field not in meta:
                raise BadAnnotation(f"no '{field}' field: not an AVA keyframe sample")
        if not isinstance(meta["video_id"], str) or not meta["video_id"]:
            raise BadAnnotation(f"'video_id' is {meta['video_id']!r:.60}, not a movie name")
        if not (isinstance(meta["timestamp"], int) and not isinstance(meta["timestamp"], bool)):
            raise BadAnnotation(f"'timestamp' is {meta['timestamp']!r:.60}, not a whole second")
        if not (_is_number(meta["keyframe_sec"]) and meta["keyframe_sec"] >= 0):
            raise BadAnnotation(f"'keyframe_sec' is {meta['keyframe_sec']!r:.60}, not a time in seconds")
        boxes = _read_boxes(meta, "boxes")
        labels = _read_labels(meta, len(boxes), num_actions)
        det_boxes = det_scores = None
        if "det_boxes" in meta or "det_scores" in meta:
            if "det_boxes" not in meta or "det_scores" not in meta:
                raise BadAnnotation("'det_boxes' and 'det_scores' come together: one without the other")
            det_boxes = _read_boxes(meta, "det_boxes")
            scores = meta.get("det_scores")
            if not (isinstance(scores, list) and len(scores) == len(det_boxes) and all(map(_is_number, scores))):
                raise BadAnnotation(
                    f"'det_scores' is {scores!r:.60}: not one score per detection ({len(det_boxes)} det_boxes)"
                )
            det_scores = np.array(scores, dtype=np.float64)
        return cls(
            meta["video_id"], meta["timestamp"], float(meta["keyframe_sec"]), boxes, labels, det_boxes, det_scores
        )


@dataclass(frozen=True)
class RoIs:
    boxes: np.ndarray  # float64 R×4, normalised to the keyframe's full frame
    labels: np.ndarray  # float32 R×A multi-hot, column a − 1 = action id a; all zero for a negative


def box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """N×M intersection over union of N and M boxes (x1, y1, x2, y2); 0 where the union is empty."""
    low = np.maximum(first[:, None, :2], second[None, :, :2])
    high = np.minimum(first[:, None, 2:], second[None, :, 2:])
    inter = np.clip(high - low, 0.0, None).prod(-1)
    union = box_area(first)[:, None] + box_area(second)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _multi_hot(labels: list[list[int]], num_actions: int) -> np.ndarray:
    out = np.zeros((len(labels), num_actions), dtype=np.float32)
    for row, actions in enumerate(labels):
        out[row, [a - 1 for a in actions]] = 1.0
    return out


def _matched_labels(keyframe: KeyframeAnnotation, boxes: np.ndarray, num_actions: int) -> np.ndarray:
    """Per box, the union of the actions of the ground-truth boxes it overlaps with IoU ≥ MATCH_IOU."""
    ground_truth = _multi_hot(keyframe.labels, num_actions)
    matches = (box_iou(boxes, keyframe.boxes) >= MATCH_IOU).astype(np.float32)
    return np.minimum(matches @ ground_truth, 1.0)


def _detections_above(keyframe: KeyframeAnnotation, score: float) -> np.ndarray:
    return keyframe.det_boxes[keyframe.det_scores >= score]


def training_rois(keyframe: KeyframeAnnotation, train_score: float, num_actions: int) -> RoIs:
    detections = np.zeros((0, 4)) if keyframe.det_boxes is None else _detections_above(keyframe, train_score)
    is_ground_truth = (detections[:, None, :] == keyframe.boxes[None, :, :]).all(-1).any(-1)
    detections = detections[~is_ground_truth]
    boxes = np.concatenate([keyframe.boxes, detections])
    labels = np.concatenate(
        [_multi_hot(keyframe.labels, num_actions), _matched_labels(keyframe, detections, num_actions)]
    )
    return RoIs(boxes, labels)


def eval_rois(keyframe: KeyframeAnnotation, test_score: float, source: str, num_actions: int) -> RoIs:
    """`source` is one of TEST_BOX_SOURCES (checked where the clip maker is built); with "detections" the keyframe
    must have them (`det_boxes is not None`, checked by the caller, which can name the sample)."""
    if source == "ground_truth":
        return RoIs(keyframe.boxes, _multi_hot(keyframe.labels, num_actions))
    boxes = _detections_above(keyframe, test_score)
    return RoIs(boxes, _matched_labels(keyframe, boxes, num_actions))
