"""Batches made from clips and the metadata of their samples: the last step inside a loader worker.

Every batch has `video` (uint8 B×C×T×H×W in shared memory, see `pack_clips`) and `key` (list[str], the samples'
keys). A task asks for more by name (`FIELDS`):

- `label`: int64 B, the sample's class index (`label` of its JSON). A labelled field over an unlabelled sample
  (label −1, e.g. a test split) is an error naming the sample: such shards cannot train or score a classifier.
- `mask`: bool B×T'×H'×W', the clip's mask (the loader must have been given a mask generator).
- `view`: `video_index` int64 B (the video's index in pattern order) and `view` int64 B (temporal view × crops +
  crop), which identify a test view; slots short of data repeat views, so consumers de-duplicate on the pair.
- `boxes` (detection; the loader must make clips with boxes, `mfvideo.data.clips.ClipBoxes`), R = all RoIs of the
  batch, any R ≥ 0 (a keyframe without boxes adds none):
  `boxes` float32 R×4, (x1, y1, x2, y2) in pixels of the batch's `video`; `box_index` int64 R, the row of `video`
  each RoI belongs to; `box_labels` float32 R×A multi-hot over the action ids (column a − 1 = id a; an all-zero row
  is a negative); `box_norm` float32 R×4, the RoI normalised to the keyframe's full frame; `video_id` list[str] B
  and `timestamp` int64 B, the keyframe of each clip; `video_size` list[[height, width]] B, each clip's own size
  in `video` (the rest of its row is padding to its batch mates' size; a host list, read without a device sync).

`video` is the clips packed as they are; clips of different sizes (detection test batches: full frames) are padded
at the right and bottom to the largest height and width, rounded up to `pad_multiple` (`pack_clips`), which moves
no pixel and no box.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from mfvideo.data.clips import Clip
from mfvideo.data.tarstream import RawSample
from mfvideo.data.transforms import pack_clips

Item = tuple[RawSample, Clip]


class UnlabelledSample(ValueError):
    """A batch asked for labels but a sample has none."""


def _labels(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    labels = [int(sample.meta.get("label", -1)) for sample, _ in items]
    for (sample, _), label in zip(items, labels):
        if label < 0:
            raise UnlabelledSample(f"sample {sample.key!r} of shard {sample.shard!r} has no label (label {label}); "
                                   f"a classifier can only be trained or scored on labelled shards")
    return {"label": torch.tensor(labels, dtype=torch.int64)}


def _masks(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    if any(clip.mask is None for _, clip in items):
        raise ValueError("batch field 'mask' asked for, but the loader makes clips without masks")
    return {"mask": torch.from_numpy(np.stack([clip.mask for _, clip in items]))}


def _views(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    return {"video_index": torch.tensor([sample.index for sample, _ in items], dtype=torch.int64),
            "view": torch.tensor([clip.view for _, clip in items], dtype=torch.int64)}


def _boxes(items: Sequence[Item]) -> dict[str, Any]:
    if any(clip.boxes is None for _, clip in items):
        raise ValueError("batch field 'boxes' asked for, but the loader makes clips without boxes")
    rois = [clip.boxes for _, clip in items]
    counts = torch.tensor([len(r.boxes) for r in rois], dtype=torch.int64)
    return {"boxes": torch.cat([r.boxes for r in rois]),
            "box_index": torch.repeat_interleave(torch.arange(len(rois)), counts),
            "box_labels": torch.cat([r.labels for r in rois]),
            "box_norm": torch.cat([r.normalised for r in rois]),
            # both read and checked by the clip maker (mfvideo.data.boxes.KeyframeAnnotation)
            "video_id": [sample.meta["video_id"] for sample, _ in items],
            "timestamp": torch.tensor([sample.meta["timestamp"] for sample, _ in items], dtype=torch.int64),
            "video_size": [list(clip.video.shape[2:]) for _, clip in items]}


FIELDS: dict[str, Callable[[Sequence[Item]], dict[str, Any]]] = {
    "label": _labels, "mask": _masks, "view": _views, "boxes": _boxes,
}


class Collate:
    def __init__(self, fields: Sequence[str], pad_multiple: int = 1):
        unknown = [name for name in fields if name not in FIELDS]
        if unknown:
            raise ValueError(f"unknown batch field(s) {unknown}; known: {sorted(FIELDS)}")
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be at least 1, got {pad_multiple}")
        self.fields = tuple(fields)
        self.pad_multiple = pad_multiple

    def __call__(self, items: Sequence[Item]) -> dict[str, Any]:
        batch: dict[str, Any] = {"video": pack_clips([clip.video for _, clip in items], self.pad_multiple),
                                 "key": [sample.key for sample, _ in items]}
        for name in self.fields:
            batch.update(FIELDS[name](items))
        return batch
