"""One video in, its clips out: temporal sampling, a single decode of the union of their frames, spatial
transforms and masks.

Training gives `repeated_sampling` = k clips per video, each with its own temporal position, crop, flip and mask
(repeated sampling: the decoder runs once over the union of the k clips' frames). Testing gives
`test_clips × test_crops` views, view id = temporal view × test_crops + crop. Everything random comes from the
generator passed in, in a fixed order (all temporal draws, then per clip: crop, flip, mask), so a video's clips
are a function of its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from mfvideo.data import sampling
from mfvideo.data.decode import DecodedMedia
from mfvideo.data.transforms import EvalTransform, TrainTransform

SAMPLING_MODES = ("random", "segment")


@dataclass
class Clip:
    video: torch.Tensor            # uint8 T×C×H×W, cropped and resized
    frame_indices: np.ndarray      # the decoded frames it shows (debugging and tests)
    view: int
    mask: Optional[np.ndarray] = None


@dataclass(frozen=True)
class TemporalSampling:
    num_frames: int
    sampling_rate: int
    reference_fps: float
    mode: str  # random | segment

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"data.sampling must be one of {SAMPLING_MODES}, got {self.mode!r}")

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


def decode_clips(media: DecodedMedia, clip_indices: list[np.ndarray]) -> tuple[torch.Tensor, list[Optional[torch.Tensor]]]:
    """Decode the union of the clips' frames once: uint8 T×H×W×C, and per clip the positions of its frames in it
    (None when the clip is the whole decoded run, which saves a copy)."""
    union, positions = sampling.frame_union(clip_indices)
    frames = media.frames(union)
    whole = np.arange(len(union))
    return frames, [None if np.array_equal(p, whole) else torch.from_numpy(p) for p in positions]


class TrainClips:
    def __init__(self, temporal: TemporalSampling, transform: TrainTransform, repeats: int,
                 mask_generator: Optional[Callable[[np.random.Generator], np.ndarray]]):
        if repeats < 1:
            raise ValueError(f"data.repeated_sampling must be at least 1, got {repeats}")
        self.temporal = temporal
        self.transform = transform
        self.repeats = repeats
        self.mask_generator = mask_generator

    @property
    def clips_per_video(self) -> int:
        return self.repeats


    def __call__(self, media: DecodedMedia, rng: np.random.Generator) -> list[Clip]:
        indices = [self.temporal.train(media, rng) for _ in range(self.repeats)]
        frames, positions = decode_clips(media, indices)
        clips = []
        for view, (clip_positions, frame_indices) in enumerate(zip(positions, indices)):
            video = self.transform(frames, rng, clip_positions)
            mask = self.mask_generator(rng) if self.mask_generator is not None else None
            clips.append(Clip(video, frame_indices, view, mask))
        return clips


class EvalClips:
    def __init__(self, temporal: TemporalSampling, transform: EvalTransform, num_clips: int):
        if num_clips < 1:
            raise ValueError(f"data.test_clips must be at least 1, got {num_clips}")
        self.temporal = temporal
        self.transform = transform
        self.num_clips = num_clips

    @property
    def clips_per_video(self) -> int:
        return self.num_clips * self.transform.num_crops


    def __call__(self, media: DecodedMedia, rng: np.random.Generator) -> list[Clip]:
        indices = self.temporal.test(media, self.num_clips)
        frames, positions = decode_clips(media, indices)
        clips = []
        for temporal_view, (clip_positions, frame_indices) in enumerate(zip(positions, indices)):
            for crop, video in enumerate(self.transform(frames, clip_positions)):
                clips.append(Clip(video, frame_indices, temporal_view * self.transform.num_crops + crop))
        return clips
