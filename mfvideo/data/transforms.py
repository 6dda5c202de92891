"""Spatial transforms for clips, identical for every frame of a clip, in plain torch (no torchvision).

Input: decoded frames, uint8 `T×H×W×C` (the decoder's layout, optionally with the positions of the clip's frames in
them). Output: uint8 `T×C×H×W` clips; `pack_clips` makes the uint8 `B×C×T×H×W` batch a worker hands over and
`Normalise` turns it into float32 where it is consumed.
Every transform is a crop box in source pixels followed by one bilinear resize of only that box to the output
size, so the cost is proportional to the output, not to the source frame (a short-side resize followed by a crop
is the same box mapped back to the source). Bilinear, `align_corners=False`, no antialiasing (the usual video
recipe: 320p sources go to 224, a mild downscale).

- training: random resized crop (area fraction and aspect ratio relative to the source frame, torchvision's
  rejection rule with a centre-crop fallback), optional horizontal flip, optional RandAugment (`augment.py`, on
  the crop), normalisation;
- testing: short side to `test_short_side`, then a centre crop or three crops (start, centre, end of the long
  side), normalisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info

from mfvideo.data.augment import RandAugment


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(height: int, width: int, area_range: Sequence[float], aspect_range: Sequence[float],
                            rng: np.random.Generator, tries: int = 10) -> CropBox:
    """A box covering a uniform fraction `area_range` of the frame with log-uniform aspect (w/h) in
    `aspect_range`; after `tries` boxes that do not fit, the largest centred box with an aspect inside the range."""
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(tries):
        area = height * width * rng.uniform(area_range[0], area_range[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        box_w = int(round(math.sqrt(area * aspect)))
        box_h = int(round(math.sqrt(area / aspect)))
        if 0 < box_w <= width and 0 < box_h <= height:
            top = int(rng.integers(0, height - box_h + 1))
            left = int(rng.integers(0, width - box_w + 1))
            return CropBox(top, left, box_h, box_w)
    frame_aspect = width / height
    if frame_aspect < aspect_range[0]:
        box_w, box_h = width, int(round(width / aspect_range[0]))
    elif frame_aspect > aspect_range[1]:
        box_w, box_h = int(round(height * aspect_range[1])), height
    else:
        box_w, box_h = width, height
    return CropBox((height - box_h) // 2, (width - box_w) // 2, box_h, box_w)


CROP_COUNTS = (1, 3)  # spatial test crops: the centre, or both ends and the centre of the long side


def eval_crop_boxes(height: int, width: int, short_side: int, crop_size: int, num_crops: int) -> list[CropBox]:
    """Boxes in source pixels equal to: resize the short side to `short_side`, then crop `crop_size` squares at
    the centre (1 crop) or at the start, centre and end of the long side (3 crops)."""
    if num_crops not in CROP_COUNTS:
        raise ValueError(f"data.test_crops must be one of {CROP_COUNTS}, got {num_crops}")
    scale = short_side / min(height, width)
    side = min(int(round(crop_size / scale)), height, width)
    spare_h, spare_w = height - side, width - side
    positions = [0.5] if num_crops == 1 else [0.0, 0.5, 1.0]
    if height > width:
        return [CropBox(int(round(spare_h * p)), spare_w // 2, side, side) for p in positions]
    return [CropBox(spare_h // 2, int(round(spare_w * p)), side, side) for p in positions]


def resize_box(frames: torch.Tensor, box: CropBox, size: int, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 T×H×W×C → uint8 T×C×size×size: only the box (of the frames at `positions`, default all) is copied
    and resized; torch's uint8 bilinear kernel is several times faster than converting to float first."""
    region = frames[:, box.top:box.top + box.height, box.left:box.left + box.width, :]
    if positions is not None:
        region = region.index_select(0, positions)  # a row-wise copy; advanced indexing is ~10× slower here
    clip = region.permute(0, 3, 1, 2)
    if (box.height, box.width) != (size, size):
        clip = F.interpolate(clip, size=(size, size), mode="bilinear", align_corners=False)
    return clip


def pack_clips(clips: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 T×C×H×W clips → one uint8 B×C×T×H×W batch. Inside a loader worker the batch lives in shared memory
    from the start (as torch's own collate does), so handing it to the main process costs no further copy."""
    frames, channels, height, width = clips[0].shape
    shape = (len(clips), channels, frames, height, width)
    if get_worker_info() is None:
        batch = torch.empty(shape, dtype=torch.uint8)
    else:
        batch = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
    for out, clip in zip(batch, clips):
        out.copy_(clip.transpose(0, 1))
    return batch


class Normalise:
    """uint8 B×C×T×H×W → float32, (x / 255 − mean) / std per channel, on the batch's device.

    Workers hand over uint8 (a quarter of the bytes through shared memory and to the GPU); this runs where the
    batch is consumed, on the GPU when there is one."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(-1, 1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(-1, 1, 1, 1)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale.to(video.device), self.shift.to(video.device)
        out = video.to(torch.float32)
        return torch.addcmul(-shift, out, scale, out=out)


class TrainTransform:
    """Random resized crop → flip (p = 0.5 when `flip`) → `rand_augment` when given, all drawn from `rng`."""

    def __init__(self, crop_size: int, area_range: Sequence[float], aspect_range: Sequence[float], flip: bool,
                 rand_augment: Optional[RandAugment] = None):
        self.crop_size = crop_size
        self.area_range = tuple(area_range)
        self.aspect_range = tuple(aspect_range)
        self.flip = flip
        self.rand_augment = rand_augment

    def __call__(self, frames: torch.Tensor, rng: np.random.Generator,
                 positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        box = random_resized_crop_box(frames.shape[1], frames.shape[2], self.area_range, self.aspect_range, rng)
        clip = resize_box(frames, box, self.crop_size, positions)
        if self.flip and rng.uniform() < 0.5:
            clip = clip.flip(-1)
        if self.rand_augment is not None:
            clip = self.rand_augment(clip, rng)
        return clip


class EvalTransform:
    """Short-side resize → centre crop or three crops; deterministic."""

    def __init__(self, crop_size: int, short_side: int, num_crops: int):
        if crop_size > short_side:
            raise ValueError(f"data.crop_size={crop_size} is larger than data.test_short_side={short_side}")
        self.crop_size = crop_size
        self.short_side = short_side
        self.num_crops = num_crops

    def __call__(self, frames: torch.Tensor, positions: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        boxes = eval_crop_boxes(frames.shape[1], frames.shape[2], self.short_side, self.crop_size, self.num_crops)
        return [resize_box(frames, box, self.crop_size, positions) for box in boxes]
