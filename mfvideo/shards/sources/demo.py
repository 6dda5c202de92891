"""Procedural demo videos: one shape moving over a textured background; the class is the kind of motion.

A single frame says nothing about the class (shape, colour, position and background are drawn independently
of it), so a model must use time. Every video is a function of (seed, index) only, encoded as real H.264.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfvideo.shards.drawing import background, shape_mask, vivid_colour
from mfvideo.shards.encode import VideoInfo, encode_rgb_frames
from mfvideo.shards.items import Item, ItemList
from mfvideo.shards.sources.common import SourceError

MOTIONS = ("move_right", "move_left", "move_down", "move_up", "rotate_clockwise", "rotate_counterclockwise",
           "grow", "shrink")
_SHAPES = ("triangle", "bar", "square", "disc")  # rotations use the first two: their turn is visible


@dataclass(frozen=True)
class DemoSource:
    num_videos: int = 200
    num_classes: int = 4            # the first N of MOTIONS
    width: int = 112
    height: int = 112
    min_frames: int = 32
    max_frames: int = 48
    fps: int = 30
    seed: int = 0

    name = "demo"

    def __post_init__(self) -> None:
        if not 2 <= self.num_classes <= len(MOTIONS):
            raise SourceError(f"demo num_classes must be in 2..{len(MOTIONS)}, got {self.num_classes}")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 16:
            raise SourceError(f"demo width/height must be even and >= 16, got {self.width}x{self.height}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise SourceError(f"demo frames need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if self.num_videos < 1:
            raise SourceError(f"demo num_videos must be >= 1, got {self.num_videos}")

    def list_items(self) -> ItemList:
        # Balanced labels in a seeded order, so any prefix of the set has every class.
        order = np.random.default_rng([self.seed, 0x5EED]).permutation(self.num_videos)
        items = []
        for index in range(self.num_videos):
            label = int(order[index] % self.num_classes)
            params = {"seed": self.seed, "index": index, "motion": MOTIONS[label], "width": self.width,
                      "height": self.height, "min_frames": self.min_frames, "max_frames": self.max_frames,
                      "fps": self.fps}
            items.append(Item(id=f"demo{self.seed}_{index:06d}", kind="demo", label=label,
                              label_name=MOTIONS[label], params=params))
        return ItemList(items=items, classes=list(MOTIONS[: self.num_classes]))


def _trajectory(motion: str, rng: np.random.Generator, num_frames: int, size: float):
    """Per-frame (centre x, centre y, angle, scale) in pixels/radians for the given motion."""
    progress = np.linspace(0.0, 1.0, num_frames)
    radius = size * rng.uniform(0.12, 0.18)
    margin = radius * 1.3
    travel = size * rng.uniform(0.35, 0.5)  # < size - 2 * margin: radius <= 0.18 * size
    cx, cy = rng.uniform(margin, size - margin), rng.uniform(margin, size - margin)
    angle0 = rng.uniform(0, 2 * np.pi)
    x, y = np.full(num_frames, cx), np.full(num_frames, cy)
    angle, scale = np.full(num_frames, angle0), np.ones(num_frames)
    lo, hi = margin, size - margin - travel
    if motion in ("move_right", "move_left", "move_down", "move_up"):
        start = rng.uniform(lo, hi)
        path = start + travel * progress
        if motion in ("move_left", "move_up"):
            path = path[::-1]
        if motion in ("move_right", "move_left"):
            x = path
        else:
            y = path
    elif motion.startswith("rotate"):
        turn = rng.uniform(0.5, 1.0) * np.pi * (1 if motion == "rotate_clockwise" else -1)
        angle = angle0 + turn * progress
    else:
        ratio = rng.uniform(1.8, 2.4)
        scale = (1 / ratio + (1 - 1 / ratio) * progress) if motion == "grow" else (1 - (1 - 1 / ratio) * progress)
        radius *= 1.2
    return x, y, angle, scale, radius


def render_demo_video(seed: int, index: int, motion: str, width: int, height: int, min_frames: int,
                      max_frames: int, fps: int) -> tuple[bytes, VideoInfo]:
    rng = np.random.default_rng([seed, index])
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    shape = _SHAPES[int(rng.integers(0, 2 if motion.startswith("rotate") else len(_SHAPES)))]
    colour = vivid_colour(rng)
    backdrop = background(rng, height, width)
    size = float(min(width, height))
    xs, ys, angles, scales, radius = _trajectory(motion, rng, num_frames, size)
    offset = ((width - size) / 2, (height - size) / 2)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for x, y, angle, scale in zip(xs, ys, angles, scales):
        inside = shape_mask(shape, xx, yy, x + offset[0], y + offset[1], angle, radius * scale)
        frame = np.where(inside[..., None], colour, backdrop)
        frames.append(frame.astype(np.uint8))
    return encode_rgb_frames(frames, fps)
