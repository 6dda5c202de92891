"""Which frames a clip takes: frame-index sampling for training and testing.

All functions return int64 index arrays into the video's decodable frames and take an explicit
`numpy.random.Generator` where they draw, so a sample's clips depend only on its own seed (deterministic and
resumable, independent of worker layout). pytorchvideo's clip samplers are not used: `pytorchvideo.data` does
not import without torchvision, and its samplers draw from the global `random` module.

Short videos never fail: indices past the last frame are clamped to it (the last frame repeats; before the first
frame, the first repeats), and a one-frame source (an image) gives index 0 everywhere.
"""

from __future__ import annotations

import numpy as np


def clip_stride(sampling_rate: int, fps: float, reference_fps: float) -> float:
    """Stride in frames of the video: `sampling_rate` is defined at `reference_fps` (4 at 30 fps spans 64 frames
    for 16 frames); a 60 fps video strides 8, a 15 fps one 2. Unknown fps (0) keeps the nominal stride."""
    if fps <= 0:
        return float(sampling_rate)
    return sampling_rate * fps / reference_fps


def _frame_indices(positions: np.ndarray, video_frames: int) -> np.ndarray:
    """Fractional frame positions → decodable indices; past the end repeats the last frame (short videos)."""
    return np.clip(np.floor(positions).astype(np.int64), 0, video_frames - 1)


def _clip_at(start: float, num_frames: int, stride: float, video_frames: int) -> np.ndarray:
    return _frame_indices(start + stride * np.arange(num_frames), video_frames)


def _free_span(video_frames: int, num_frames: int, stride: float) -> float:
    """How far the clip's start can move: frames of the video not covered by the clip's span."""
    return max(video_frames - num_frames * stride, 0.0)


def random_clip(video_frames: int, num_frames: int, stride: float, rng: np.random.Generator) -> np.ndarray:
    """Training clip: start uniform over every position where the whole span fits (0 when it never fits)."""
    start = rng.uniform(0.0, _free_span(video_frames, num_frames, stride))
    return _clip_at(start, num_frames, stride, video_frames)


def uniform_clips(video_frames: int, num_frames: int, stride: float, num_clips: int) -> list[np.ndarray]:
    """Test clips: `num_clips` starts at the centres of equal parts of the free span (one clip: the middle)."""
    free = _free_span(video_frames, num_frames, stride)
    return [_clip_at(free * (i + 0.5) / num_clips, num_frames, stride, video_frames) for i in range(num_clips)]


def centred_clip(centre: int, num_frames: int, stride: float, video_frames: int) -> np.ndarray:
    """AVA: the clip around frame `centre` (the keyframe), which is its frame `num_frames // 2` (PySlowFast's
    `get_sequence`: 16 × 4 takes centre − 32, centre − 28, …, centre + 28). Positions before the first or after the
    last frame repeat that edge frame."""
    return _frame_indices(centre + stride * (np.arange(num_frames) - num_frames // 2), video_frames)


def _segment_bounds(video_frames: int, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, float(video_frames), num_segments + 1)
    return edges[:-1], edges[1:]


def random_segments(video_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """SSv2 training: the video cut into `num_segments` equal parts, one uniformly random frame from each."""
    low, high = _segment_bounds(video_frames, num_segments)
    return _frame_indices(low + rng.uniform(0.0, 1.0, num_segments) * (high - low), video_frames)


def uniform_segments(video_frames: int, num_segments: int, num_clips: int) -> list[np.ndarray]:
    """SSv2 testing: view i takes the frame at fraction (i + 0.5) / num_clips of every segment (one view: the
    middle frame of each segment)."""
    low, high = _segment_bounds(video_frames, num_segments)
    return [_frame_indices(low + (i + 0.5) / num_clips * (high - low), video_frames) for i in range(num_clips)]


def frame_union(clips: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sorted distinct frames of several clips (decoded once) and, per clip, positions into that union."""
    union = np.unique(np.concatenate(clips))
    return union, [np.searchsorted(union, clip) for clip in clips]
