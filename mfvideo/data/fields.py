"""The batch contract: every key a batch can carry, with its dtype and shape, declared once here.

A batch is a dict of these keys. The loader's collate makes them from the (sample, clip) pairs of a batch, grouped
as `Field`s that a task asks for (`mfvideo.data.collate.Collate`); a few are made on the device instead, after the
transfer (`made_on_device`: the uint8 pixels kept beside the normalised video, mixed targets). Whoever reads a batch
(a model's forward, an evaluator's update) names the keys it reads and checks them with `check_batch`, which reports
every key that is missing or of the wrong dtype or shape, naming the reader.

Shapes are written with ×: a number is a fixed size, a letter a size that must agree across the keys checked
together (B: clips of the batch, R: regions of interest of the batch, A: action ids). Host lists (dtype None) have a
length, their first dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass(frozen=True)
class Key:
    name: str
    dtype: Optional[torch.dtype]  # None: a host list (read without a device sync)
    shape: str
    doc: str

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self.shape.split("×"))


VIDEO = Key("video", torch.float32, "B×3×T×H×W", "the clips, normalised (uint8 inside the workers)")
SAMPLE_KEY = Key("key", None, "B", "each clip's sample key in its shard")
LABEL = Key("label", torch.int64, "B", "the sample's class index (the `label` of its JSON)")
TARGET = Key("target", torch.float32, "B×K", "soft targets over K classes (mixup, CutMix, label smoothing)")
MASK = Key("mask", torch.bool, "B×T'×H'×W'", "the clip's mask over its mask units (time × height × width)")
PIXELS = Key("pixels", torch.uint8, "B×3×T×H×W", "the same clips as `video` before normalising: exact values")
VIDEO_INDEX = Key("video_index", torch.int64, "B", "the video's index in the split's shard order")
VIEW = Key("view", torch.int64, "B", "the test view: temporal view × crops + crop")
SAMPLE_LABEL = Key("sample_label", torch.int64, "B", "the sample's `label`, −1 when it has none (unlabelled splits)")
SHARD = Key("shard", None, "B", "the shard each clip's sample came from")
BOXES = Key("boxes", torch.float32, "R×4", "RoIs (x1, y1, x2, y2) in pixels of `video`")
BOX_INDEX = Key("box_index", torch.int64, "R", "the row of `video` each RoI belongs to")
BOX_LABELS = Key("box_labels", torch.float32, "R×A", "multi-hot action ids (column a − 1 = id a); zeros: a negative")
BOX_NORM = Key("box_norm", torch.float32, "R×4", "the RoI normalised to its keyframe's full frame (AVA CSV form)")
VIDEO_ID = Key("video_id", None, "B", "each clip's keyframe: its video id")
TIMESTAMP = Key("timestamp", torch.int64, "B", "each clip's keyframe: its second")
FRAME_PLANS = Key(
    "frame_plans",
    None,
    "B",
    "when the device decodes (data.decode_device): each clip's compressed video, frames and crop, in place of `video` "
    "until the device step decodes them (mfvideo.data.device_decode)",
)
VIDEO_SIZE = Key("video_size", None, "B", "each clip's own [height, width] in `video` (the rest is padding)")


@dataclass(frozen=True)
class Field:
    """Keys a collate makes together from the batch's (sample, clip) pairs; `collect(items) -> {key: value}`."""

    name: str
    keys: tuple[Key, ...]
    collect: Callable[[Sequence[Any]], dict[str, Any]]


def check_batch(batch: Mapping[str, Any], keys: Sequence[Key], reader: str, sizes: Mapping[str, int] = ()) -> None:
    """ValueError naming `reader` and every key of `keys` that `batch` lacks or holds with another dtype, number of
    dimensions or size; `sizes` fixes letters in advance (e.g. {"A": num_classes})."""
    known = dict(sizes)
    problems = []
    for key in keys:
        if key.name not in batch:
            problems.append(f"{key.name} is missing")
            continue
        value = batch[key.name]
        if key.dtype is None:
            shape: tuple[int, ...] = (len(value),)
        elif not torch.is_tensor(value):
            problems.append(f"{key.name} is a {type(value).__name__}, not a tensor")
            continue
        else:
            shape = tuple(value.shape)
            floating = key.dtype.is_floating_point and value.dtype.is_floating_point
            if value.dtype != key.dtype and not floating:  # float16/bfloat16 inputs pass where float32 is declared
                problems.append(f"{key.name} is {value.dtype}, expected {key.dtype}")
        dims = key.dims if key.dtype is not None else key.dims[:1]
        if len(shape) != len(dims):
            problems.append(f"{key.name} has shape {shape}, expected {key.shape}")
            continue
        for dim, size in zip(dims, shape):
            if dim.isdigit() and size != int(dim):
                problems.append(f"{key.name} has shape {shape}, expected {key.shape}")
                break
            if not dim.isdigit() and size != known.setdefault(dim, size):
                problems.append(f"{key.name} has shape {shape}, expected {key.shape} with {dim}={known[dim]}")
                break
    if problems:
        raise ValueError(f"{reader}: batch does not fit: {'; '.join(problems)} (keys present: {sorted(batch)})")
