"""One video in, its clips out: temporal sampling, a single decode of the union of their frames, spatial
transforms, masks and boxes.

A clip maker is called as `maker(media, rng, sample)` with the sample's opened media, its generator and the sample
itself (its JSON `meta`, key and shard); it has `clips_per_video`. Classification and pretraining clips depend on
the media alone; detection clips read the sample's keyframe and boxes.

Training gives `repeated_sampling` = k clips per video, each with its own temporal position, crop, flip and mask
(repeated sampling: the decoder runs once over the union of the k clips' frames). Testing gives
`test_clips × test_crops` views, view id = temporal view × test_crops + crop. Everything random comes from the
generator passed in, in a fixed order (all temporal draws, then per clip: crop, flip, mask), so a video's clips
are a function of its seed alone.

Detection (AVA, one sample per keyframe, `mfvideo.data.boxes`): the clip is centred on the keyframe
(`TemporalSampling.centred`) and carries its RoIs (`ClipBoxes`). Training gives k clips of that one decode, each with
its own short side, crop and flip (drawn in that order) moving its boxes; testing gives one full-frame clip (view 0).
A sample whose box fields break the format raises `BadAnnotation` (skipped and counted by the stream); testing on
detections from a shard made without them raises `MissingDetections` (stops the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from mfvideo.data import sampling
from mfvideo.data.boxes import (
    TEST_BOX_SOURCES,
    BadAnnotation,
    KeyframeAnnotation,
    MissingDetections,
    RoIs,
    eval_rois,
    training_rois,
)
from mfvideo.data.decode import DecodedMedia, EncodedVideo
from mfvideo.data.tarstream import RawSample
from mfvideo.data.transforms import (
    ClipGeometry,
    DetectionEvalTransform,
    DetectionTrainTransform,
    EvalTransform,
    TrainTransform,
)

SAMPLING_MODES = ("random", "segment")


@dataclass
class ClipBoxes:
    """A clip's RoIs: R ≥ 0 rows, the same order in every field."""

    boxes: torch.Tensor  # float32 R×4, (x1, y1, x2, y2) in pixels of the clip's video
    labels: torch.Tensor  # float32 R×A multi-hot over the action ids (column a − 1 = id a); zero: a negative
    normalised: torch.Tensor  # float32 R×4, the RoIs normalised to the keyframe's full frame (as the AVA CSV has them)


@dataclass(frozen=True)
class FramePlan:
    """A clip to be decoded on the device (`mfvideo.data.device_decode`): its video's compressed bytes, the frames
    to decode (the union over the video's clips, shared by them), the positions of this clip's frames in them (None:
    all) and its geometry."""

    data: bytes
    num_frames: int  # of the video, as the worker counted them
    frame_size: tuple[int, int]  # (height, width) the geometry was drawn for, from the headers
    frames: np.ndarray
    positions: Optional[np.ndarray]
    geometry: ClipGeometry


@dataclass
class Clip:
    video: Optional[torch.Tensor]  # uint8 T×C×H×W, cropped and resized; None when the device decodes (`plan`)
    frame_indices: np.ndarray  # the decoded frames it shows (debugging and tests)
    view: int
    mask: Optional[np.ndarray] = None
    boxes: Optional[ClipBoxes] = None
    plan: Optional[FramePlan] = None


@dataclass(frozen=True)
class TemporalSampling:
    num_frames: int
    sampling_rate: int
    reference_fps: float
    mode: str  # random | segment

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"temporal sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")

    def train(self, media: DecodedMedia, rng: np.random.Generator) -> np.ndarray:
        if self.mode == "segment":
            return sampling.random_segments(media.num_frames, self.num_frames, rng)
        stride = sampling.clip_stride(self.sampling_rate, media.fps, self.reference_fps)
        return sampling.random_clip(media.num_frames, self.num_frames, stride, rng)

    def test(self, media: DecodedMedia, num_clips: int) -> list[np.ndarray]:
        if self.mode == "segment":
            return sampling.uniform_segments(media.num_frames, self.num_frames, num_clips)
        stride = sampling.clip_stride(self.sampling_rate, media.fps, self.reference_fps)
        return sampling.uniform_clips(media.num_frames, self.num_frames, stride, num_clips)

    def centred(self, media: DecodedMedia, time: float) -> np.ndarray:
        """The clip centred on the frame shown at `time` seconds from the first (the nearest frame; a time in the
        last frame's display interval is that frame); positions beyond either end repeat the edge frame."""
        if media.fps <= 0:
            raise ValueError("the video's frame rate is unknown: the keyframe cannot be placed")
        duration = media.num_frames / media.fps
        if not 0.0 <= time <= duration:
            raise BadAnnotation(f"keyframe_sec={time} lies outside the video's {duration:.3f} s")
        centre = min(int(round(time * media.fps)), media.num_frames - 1)
        stride = sampling.clip_stride(self.sampling_rate, media.fps, self.reference_fps)
        return sampling.centred_clip(centre, self.num_frames, stride, media.num_frames)


class ClipMaker(Protocol):
    """One video in, its clips out (module docstring); `clips_per_video` clips for every video."""

    clips_per_video: int

    def __call__(self, media: DecodedMedia, rng: np.random.Generator, sample: RawSample) -> list[Clip]: ...


def _union(clip_indices: list[np.ndarray]) -> tuple[np.ndarray, list[Optional[np.ndarray]]]:
    """The union of the clips' frames, and per clip the positions of its frames in it (None when the clip is the
    whole union, which saves a copy)."""
    union, positions = sampling.frame_union(clip_indices)
    whole = np.arange(len(union))
    return union, [None if np.array_equal(p, whole) else p for p in positions]


def decode_clips(
    media: DecodedMedia, clip_indices: list[np.ndarray]
) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """Decode the union of the clips' frames once: uint8 T×H×W×C, and per clip the positions of its frames in it
    (None when the clip is the whole decoded run)."""
    union, positions = _union(clip_indices)
    return media.frames(union), [None if p is None else torch.from_numpy(p) for p in positions]


def _planned(media: EncodedVideo, clip_indices: list[np.ndarray], geometries: list[ClipGeometry]) -> list[FramePlan]:
    union, positions = _union(clip_indices)
    size = (media.height, media.width)
    return [FramePlan(media.data, media.num_frames, size, union, p, g) for p, g in zip(positions, geometries)]


class TrainClips:
    def __init__(
        self,
        temporal: TemporalSampling,
        transform: TrainTransform,
        repeats: int,
        mask_generator: Optional[Callable[[np.random.Generator], np.ndarray]],
    ):
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.temporal = temporal
        self.transform = transform
        self.repeats = repeats
        self.mask_generator = mask_generator

    @property
    def clips_per_video(self) -> int:
        return self.repeats

    def __call__(self, media: DecodedMedia, rng: np.random.Generator, sample: Optional[RawSample] = None) -> list[Clip]:
        indices = [self.temporal.train(media, rng) for _ in range(self.repeats)]
        if isinstance(media, EncodedVideo):
            return self._planned(media, indices, rng)
        frames, positions = decode_clips(media, indices)
        clips = []
        for view, (clip_positions, frame_indices) in enumerate(zip(positions, indices)):
            video = self.transform(frames, rng, clip_positions)
            mask = self.mask_generator(rng) if self.mask_generator is not None else None
            clips.append(Clip(video, frame_indices, view, mask))
        return clips

    def _planned(self, media: EncodedVideo, indices: list[np.ndarray], rng: np.random.Generator) -> list[Clip]:
        """The same draws in the same order as from decoded frames (per clip: crop, flip, mask), pixels left to the
        device."""
        if self.transform.rand_augment is not None:
            raise ValueError("RandAugment runs on decoded clips in the workers: it cannot follow decoding on a device")
        geometries, masks = [], []
        for _ in indices:
            geometries.append(self.transform.geometry(media.height, media.width, rng))
            masks.append(self.mask_generator(rng) if self.mask_generator is not None else None)
        plans = _planned(media, indices, geometries)
        return [Clip(None, i, view, mask, plan=plan) for view, (i, mask, plan) in enumerate(zip(indices, masks, plans))]


class EvalClips:
    def __init__(self, temporal: TemporalSampling, transform: EvalTransform, num_clips: int):
        if num_clips < 1:
            raise ValueError(f"num_clips must be at least 1, got {num_clips}")
        self.temporal = temporal
        self.transform = transform
        self.num_clips = num_clips

    @property
    def clips_per_video(self) -> int:
        return self.num_clips * self.transform.num_crops

    def __call__(self, media: DecodedMedia, rng: np.random.Generator, sample: Optional[RawSample] = None) -> list[Clip]:
        indices = self.temporal.test(media, self.num_clips)
        if isinstance(media, EncodedVideo):
            geometries = self.transform.geometries(media.height, media.width)
            crops = len(geometries)
            plans = _planned(media, [i for i in indices for _ in geometries], geometries * len(indices))
            return [Clip(None, indices[view // crops], view, plan=plan) for view, plan in enumerate(plans)]
        frames, positions = decode_clips(media, indices)
        clips = []
        for temporal_view, (clip_positions, frame_indices) in enumerate(zip(positions, indices)):
            for crop, video in enumerate(self.transform(frames, clip_positions)):
                clips.append(Clip(video, frame_indices, temporal_view * self.transform.num_crops + crop))
        return clips


def _clip_boxes(rois: RoIs, boxes: np.ndarray, kept: np.ndarray) -> ClipBoxes:
    return ClipBoxes(
        torch.from_numpy(boxes[kept].astype(np.float32)),
        torch.from_numpy(rois.labels[kept]),
        torch.from_numpy(rois.boxes[kept].astype(np.float32)),
    )


class DetectionTrainClips:
    """`repeats` clips of one decode of the keyframe's centred clip, each with its own jitter, crop and flip, carrying
    the training RoIs (ground truth + detections scoring ≥ `train_score`) that stay in view."""

    def __init__(
        self,
        temporal: TemporalSampling,
        transform: DetectionTrainTransform,
        repeats: int,
        num_actions: int,
        train_score: float,
    ):
        if repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {repeats}")
        self.temporal = temporal
        self.transform = transform
        self.repeats = repeats
        self.num_actions = num_actions
        self.train_score = train_score

    @property
    def clips_per_video(self) -> int:
        return self.repeats

    def __call__(self, media: DecodedMedia, rng: np.random.Generator, sample: RawSample) -> list[Clip]:
        keyframe = KeyframeAnnotation.from_meta(sample.meta, self.num_actions)
        rois = training_rois(keyframe, self.train_score, self.num_actions)
        indices = self.temporal.centred(media, keyframe.time)
        frames = media.frames(indices)
        clips = []
        for view in range(self.repeats):
            video, boxes, kept = self.transform(frames, rois.boxes, rng)
            clips.append(Clip(video, indices, view, boxes=_clip_boxes(rois, boxes, kept)))
        return clips


class DetectionEvalClips:
    """One full-frame clip centred on the keyframe, carrying the detections scoring ≥ `test_score` (or the ground
    truth, `box_source="ground_truth"`)."""

    clips_per_video = 1

    def __init__(
        self,
        temporal: TemporalSampling,
        transform: DetectionEvalTransform,
        num_actions: int,
        test_score: float,
        box_source: str,
    ):
        if box_source not in TEST_BOX_SOURCES:
            raise ValueError(f"box_source must be one of {TEST_BOX_SOURCES}, got {box_source!r}")
        self.temporal = temporal
        self.transform = transform
        self.num_actions = num_actions
        self.test_score = test_score
        self.box_source = box_source

    def __call__(self, media: DecodedMedia, rng: np.random.Generator, sample: RawSample) -> list[Clip]:
        keyframe = KeyframeAnnotation.from_meta(sample.meta, self.num_actions)
        if self.box_source == "detections" and keyframe.det_boxes is None:
            raise MissingDetections(
                f"sample {sample.key!r} of shard {sample.shard!r} has no person detections (det_boxes), and testing "
                f"uses them: make the shards with --detections, or test on the ground-truth boxes "
                f"instead"
            )
        rois = eval_rois(keyframe, self.test_score, self.box_source, self.num_actions)
        indices = self.temporal.centred(media, keyframe.time)
        video, boxes, kept = self.transform(media.frames(indices), rois.boxes)
        return [Clip(video, indices, 0, boxes=_clip_boxes(rois, boxes, kept))]
