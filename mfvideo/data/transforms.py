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

Detection (AVA, PySlowFast's recipe) moves the clip's boxes with its pixels through the same crop box and resize:

- training (`DetectionTrainTransform`): short side to a uniform whole number of pixels in `short_side_range`, a
  uniformly placed `crop_size`² crop, horizontal flip (p = 0.5 when `flip`);
- testing (`DetectionEvalTransform`): the full frame, short side to `short_side`, no crop.

Boxes come in normalised to the frame and go out as (x1, y1, x2, y2) in pixels of the output, pixel j spanning
[j, j + 1) (the coordinates `align_corners=False` resizes map linearly, and those of an aligned RoIAlign). A box the
crop cuts is clipped to it, and dropped when less than `MIN_VISIBLE_FRACTION` of its area, or no width or height,
is left inside (see `clip_boxes`).
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
from mfvideo.data.boxes import box_area


@dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    height: int,
    width: int,
    area_range: Sequence[float],
    aspect_range: Sequence[float],
    rng: np.random.Generator,
    tries: int = 10,
) -> CropBox:
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
        raise ValueError(f"num_crops must be one of {CROP_COUNTS}, got {num_crops}")
    scale = short_side / min(height, width)
    side = min(int(round(crop_size / scale)), height, width)
    spare_h, spare_w = height - side, width - side
    positions = [0.5] if num_crops == 1 else [0.0, 0.5, 1.0]
    if height > width:
        return [CropBox(int(round(spare_h * p)), spare_w // 2, side, side) for p in positions]
    return [CropBox(spare_h // 2, int(round(spare_w * p)), side, side) for p in positions]


def jittered_crop_box(
    height: int, width: int, short_side_range: Sequence[int], crop_size: int, rng: np.random.Generator
) -> CropBox:
    """The box in source pixels equal to: resize the short side to a uniform whole number in `short_side_range`
    (both ends included), then crop a uniformly placed `crop_size` square (its side rounded to whole source pixels;
    never more than the frame)."""
    short_side = int(rng.integers(short_side_range[0], short_side_range[1] + 1))
    side = min(int(round(crop_size * min(height, width) / short_side)), height, width)
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return CropBox(top, left, side, side)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) of the frame resized to `short_side` on its short side, aspect kept."""
    scale = short_side / min(height, width)
    return int(round(height * scale)), int(round(width * scale))


def resize_box(
    frames: torch.Tensor, box: CropBox, size: int | tuple[int, int], positions: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """uint8 T×H×W×C → uint8 T×C×size×size (or T×C×height×width for `size` = (height, width)): only the box (of
    the frames at `positions`, default all) is copied and resized; torch's uint8 bilinear kernel is several times
    faster than converting to float first."""
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    region = frames[:, box.top : box.top + box.height, box.left : box.left + box.width, :]
    if positions is not None:
        region = region.index_select(0, positions)  # a row-wise copy; advanced indexing is ~10× slower here
    clip = region.permute(0, 3, 1, 2)
    if (box.height, box.width) == out_size:
        return clip
    if clip.is_cuda:  # CUDA has no uint8 bilinear kernel: float, rounded back (within 1 of the CPU's fixed point)
        resized = F.interpolate(clip.float(), size=out_size, mode="bilinear", align_corners=False)
        return resized.round_().clamp_(0, 255).to(torch.uint8)
    return F.interpolate(clip, size=out_size, mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class ClipGeometry:
    """Where a clip's pixels come from: a crop box in source pixels, the output (height, width) and a horizontal
    flip. Drawn in the worker; applied there to decoded frames, or on the device when the device decodes
    (`mfvideo.data.device_decode`): the same frames give the same clip on the CPU, and within one grey level of it on
    a GPU (`resize_box`)."""

    box: CropBox
    size: tuple[int, int]
    flip: bool

    def apply(self, frames: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 T×H×W×C frames (those at `positions`, default all) → the uint8 T×C×height×width clip."""
        clip = resize_box(frames, self.box, self.size, positions)
        return clip.flip(-1) if self.flip else clip


# A box keeps its label only where enough of the person is in view: a quarter of the box is where most of a body
# (and the action) can still be seen; less, and the label describes pixels the model does not get.
MIN_VISIBLE_FRACTION = 0.25


def boxes_through(
    boxes: np.ndarray, frame_height: int, frame_width: int, box: CropBox, out_height: int, out_width: int
) -> np.ndarray:
    """Boxes normalised to the frame → the same boxes in pixels of `resize_box(frames, box, (out_height,
    out_width))`'s output (unclipped)."""
    scale_x, scale_y = out_width / box.width, out_height / box.height
    x = (boxes[:, [0, 2]] * frame_width - box.left) * scale_x
    y = (boxes[:, [1, 3]] * frame_height - box.top) * scale_y
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1)


def clip_boxes(boxes: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel boxes clipped to a height×width output, and which are kept: those whose clipped part has a positive
    width and height and at least MIN_VISIBLE_FRACTION of the unclipped box's area (a box without area, which
    frames no pixel, is never kept)."""
    clipped = boxes.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    visible_width, visible_height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    kept = (visible_width > 0) & (visible_height > 0) & (box_area(clipped) >= MIN_VISIBLE_FRACTION * box_area(boxes))
    return clipped, kept


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Pixel boxes of a clip flipped left-right (`clip.flip(-1)`) of the given width."""
    return np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=1)


def pack_clips(clips: Sequence[torch.Tensor], pad_multiple: int = 1) -> torch.Tensor:
    """uint8 T×C×H×W clips → one uint8 B×C×T×H×W batch. Inside a loader worker the batch lives in shared memory
    from the start (as torch's own collate does), so handing it to the main process costs no further copy.

    H and W are the largest of the clips', each rounded up to a multiple of `pad_multiple`; a smaller clip (a
    detection test batch of full frames) sits at the top left, padded with zeros (black) at the right and bottom,
    so its pixel coordinates, and its boxes', are unchanged."""
    frames, channels = clips[0].shape[:2]
    height = -(-max(clip.shape[2] for clip in clips) // pad_multiple) * pad_multiple
    width = -(-max(clip.shape[3] for clip in clips) // pad_multiple) * pad_multiple
    shape = (len(clips), channels, frames, height, width)
    if get_worker_info() is None:
        batch = torch.empty(shape, dtype=torch.uint8)
    else:
        batch = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(math.prod(shape))).view(shape)
    if any(clip.shape[2:] != (height, width) for clip in clips):
        batch.zero_()
    for out, clip in zip(batch, clips):
        out[:, :, : clip.shape[2], : clip.shape[3]].copy_(clip.transpose(0, 1))
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

    def __init__(
        self,
        crop_size: int,
        area_range: Sequence[float],
        aspect_range: Sequence[float],
        *,
        flip: bool,
        rand_augment: Optional[RandAugment] = None,
    ):
        self.crop_size = crop_size
        self.area_range = tuple(area_range)
        self.aspect_range = tuple(aspect_range)
        self.flip = flip
        self.rand_augment = rand_augment

    def geometry(self, height: int, width: int, rng: np.random.Generator) -> ClipGeometry:
        """The crop and flip of one clip of a height×width video (drawn in that order)."""
        box = random_resized_crop_box(height, width, self.area_range, self.aspect_range, rng)
        return ClipGeometry(box, (self.crop_size, self.crop_size), bool(self.flip and rng.uniform() < 0.5))

    def __call__(
        self, frames: torch.Tensor, rng: np.random.Generator, positions: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        clip = self.geometry(frames.shape[1], frames.shape[2], rng).apply(frames, positions)
        if self.rand_augment is not None:
            clip = self.rand_augment(clip, rng)
        return clip


class EvalTransform:
    """Short-side resize → centre crop or three crops; deterministic."""

    def __init__(self, crop_size: int, short_side: int, num_crops: int):
        if crop_size > short_side:
            raise ValueError(f"crop size {crop_size} is larger than the short side {short_side}")
        self.crop_size = crop_size
        self.short_side = short_side
        self.num_crops = num_crops

    def geometries(self, height: int, width: int) -> list[ClipGeometry]:
        boxes = eval_crop_boxes(height, width, self.short_side, self.crop_size, self.num_crops)
        return [ClipGeometry(box, (self.crop_size, self.crop_size), False) for box in boxes]

    def __call__(self, frames: torch.Tensor, positions: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
        return [geometry.apply(frames, positions) for geometry in self.geometries(frames.shape[1], frames.shape[2])]


class DetectionTrainTransform:
    """Short side jittered → random crop → flip (p = 0.5 when `flip`), the boxes moved with the pixels; draws, in
    this order, from `rng`: the short side, the crop's top and left, the flip.

    Returns the uint8 T×C×crop_size×crop_size clip, the boxes in its pixels (clipped) and which boxes are kept."""

    def __init__(self, crop_size: int, short_side_range: Sequence[int], *, flip: bool):
        if len(short_side_range) != 2 or not crop_size <= short_side_range[0] <= short_side_range[1]:
            raise ValueError(
                f"short_side_range must be [min, max] with crop size {crop_size} "
                f"<= min <= max, got {list(short_side_range)}"
            )
        self.crop_size = crop_size
        self.short_side_range = tuple(short_side_range)
        self.flip = flip

    def __call__(
        self,
        frames: torch.Tensor,
        boxes: np.ndarray,
        rng: np.random.Generator,
        positions: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        height, width, size = frames.shape[1], frames.shape[2], self.crop_size
        box = jittered_crop_box(height, width, self.short_side_range, size, rng)
        clip = resize_box(frames, box, size, positions)
        out, kept = clip_boxes(boxes_through(boxes, height, width, box, size, size), size, size)
        if self.flip and rng.uniform() < 0.5:
            clip, out = clip.flip(-1), flip_boxes(out, size)
        return clip, out, kept


class DetectionEvalTransform:
    """The full frame with its short side resized to `short_side`, no crop; deterministic. Returns the uint8
    T×C×H×W clip, the boxes in its pixels and which are kept (boxes without area are not)."""

    def __init__(self, short_side: int):
        self.short_side = short_side

    def __call__(
        self, frames: torch.Tensor, boxes: np.ndarray, positions: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        height, width = frames.shape[1], frames.shape[2]
        out_height, out_width = short_side_size(height, width, self.short_side)
        whole = CropBox(0, 0, height, width)
        clip = resize_box(frames, whole, (out_height, out_width), positions)
        out, kept = clip_boxes(boxes_through(boxes, height, width, whole, out_height, out_width), out_height, out_width)
        return clip, out, kept
