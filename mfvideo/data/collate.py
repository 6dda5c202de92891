"""Batches made from clips and the metadata of their samples: the last step inside a loader worker.

Every batch has `video` (uint8 B×C×T×H×W in shared memory, see `pack_clips`) and `key` (list[str], the samples'
keys); when the device decodes, `frame_plans` (the clips' compressed videos, frames and crops) instead of `video`.
A task asks for more as `Field`s (the keys, their dtypes and shapes: `mfvideo.data.fields`):

- `LABELS` (`label`): a labelled field over an unlabelled sample (label −1, e.g. a test split) is an error naming
  the sample: such shards cannot train or score a classifier.
- `MASKS` (`mask`): the clip maker must make masks.
- `VIEWS` (`video_index`, `view`): identify a test view; slots short of data repeat views, so consumers
  de-duplicate on the pair.
- `SOURCES` (`sample_label`, `shard`): where each clip came from, labelled or not (feature extraction).
- `ROIS` (detection; the clip maker must make clips with boxes, `mfvideo.data.clips.ClipBoxes`): `boxes`,
  `box_index`, `box_labels`, `box_norm` per RoI, R = all RoIs of the batch, any R ≥ 0 (a keyframe without boxes
  adds none), and `video_id`, `timestamp`, `video_size` per clip (the size a host list, read without a device sync).

`video` is the clips packed as they are; clips of different sizes (detection test batches: full frames) are padded
at the right and bottom to the largest height and width, rounded up to `pad_multiple` (`pack_clips`), which moves
no pixel and no box.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from mfvideo.data import fields
from mfvideo.data.clips import Clip
from mfvideo.data.fields import Field
from mfvideo.data.tarstream import RawSample
from mfvideo.data.transforms import pack_clips

Item = tuple[RawSample, Clip]


class UnlabelledSample(ValueError):
    """A batch asked for labels but a sample has none."""


def _labels(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    labels = [int(sample.meta.get("label", -1)) for sample, _ in items]
    for (sample, _), label in zip(items, labels):
        if label < 0:
            raise UnlabelledSample(
                f"sample {sample.key!r} of shard {sample.shard!r} has no label (label {label}); "
                f"a classifier can only be trained or scored on labelled shards"
            )
    return {fields.LABEL.name: torch.tensor(labels, dtype=torch.int64)}


def _masks(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    if any(clip.mask is None for _, clip in items):
        raise ValueError("batch field 'masks' asked for, but the clip maker makes clips without masks")
    return {fields.MASK.name: torch.from_numpy(np.stack([clip.mask for _, clip in items]))}


def _views(items: Sequence[Item]) -> dict[str, torch.Tensor]:
    return {
        fields.VIDEO_INDEX.name: torch.tensor([sample.index for sample, _ in items], dtype=torch.int64),
        fields.VIEW.name: torch.tensor([clip.view for _, clip in items], dtype=torch.int64),
    }


def _sources(items: Sequence[Item]) -> dict[str, Any]:
    return {
        fields.SAMPLE_LABEL.name: torch.tensor([int(sample.meta.get("label", -1)) for sample, _ in items]),
        fields.SHARD.name: [sample.shard for sample, _ in items],
    }


def _boxes(items: Sequence[Item]) -> dict[str, Any]:
    if any(clip.boxes is None for _, clip in items):
        raise ValueError("batch field 'rois' asked for, but the clip maker makes clips without boxes")
    rois = [clip.boxes for _, clip in items]
    counts = torch.tensor([len(r.boxes) for r in rois], dtype=torch.int64)
    return {
        fields.BOXES.name: torch.cat([r.boxes for r in rois]),
        fields.BOX_INDEX.name: torch.repeat_interleave(torch.arange(len(rois)), counts),
        fields.BOX_LABELS.name: torch.cat([r.labels for r in rois]),
        fields.BOX_NORM.name: torch.cat([r.normalised for r in rois]),
        # both read and checked by the clip maker (mfvideo.data.boxes.KeyframeAnnotation)
        fields.VIDEO_ID.name: [sample.meta["video_id"] for sample, _ in items],
        fields.TIMESTAMP.name: torch.tensor([sample.meta["timestamp"] for sample, _ in items], dtype=torch.int64),
        fields.VIDEO_SIZE.name: [list(clip.video.shape[2:]) for _, clip in items],
    }


LABELS = Field("labels", (fields.LABEL,), _labels)
MASKS = Field("masks", (fields.MASK,), _masks)
SOURCES = Field("sources", (fields.SAMPLE_LABEL, fields.SHARD), _sources)
VIEWS = Field("views", (fields.VIDEO_INDEX, fields.VIEW), _views)
ROIS = Field(
    "rois",
    (
        fields.BOXES,
        fields.BOX_INDEX,
        fields.BOX_LABELS,
        fields.BOX_NORM,
        fields.VIDEO_ID,
        fields.TIMESTAMP,
        fields.VIDEO_SIZE,
    ),
    _boxes,
)


class Collate:
    def __init__(self, batch_fields: Sequence[Field] = (), pad_multiple: int = 1):
        if pad_multiple < 1:
            raise ValueError(f"pad_multiple must be at least 1, got {pad_multiple}")
        self.fields = tuple(batch_fields)
        self.pad_multiple = pad_multiple

    def __call__(self, items: Sequence[Item]) -> dict[str, Any]:
        batch: dict[str, Any] = {fields.SAMPLE_KEY.name: [sample.key for sample, _ in items]}
        if all(clip.plan is not None for _, clip in items):  # the device decodes: plans instead of pixels
            batch[fields.FRAME_PLANS.name] = [clip.plan for _, clip in items]
        else:
            batch[fields.VIDEO.name] = pack_clips([clip.video for _, clip in items], self.pad_multiple)
        for field in self.fields:
            batch.update(field.collect(items))
        return batch
