"""Procedural demo videos: one shape moving over a background; the class is the kind of motion, or with
`num_shapes` the pair (shape, kind of motion).

Motion classes: a single frame says nothing about the class (shape, colour, position and background are drawn
independently of it), so a model must use time. Shape-and-motion classes need both what the object looks like and
where it goes. Every video is a function of (seed, index) only, encoded as real H.264.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mfvideo.shards.drawing import background as textured_background
from mfvideo.shards.drawing import shape_mask, vivid_colour
from mfvideo.shards.encode import VideoInfo, encode_rgb_frames
from mfvideo.shards.items import Item, ItemList
from mfvideo.shards.sources.common import SourceError

MOTIONS = (
    "move_right",
    "move_left",
    "move_down",
    "move_up",
    "rotate_clockwise",
    "rotate_counterclockwise",
    "grow",
    "shrink",
)
_SHAPES = ("triangle", "bar", "square", "disc")  # rotations use the first two: their turn is visible
BACKGROUNDS = ("textured", "flat")  # a gradient with faint static blobs, or one colour


@dataclass(frozen=True)
class DemoSource:
    num_videos: int = 200
    num_motions: int = 4  # the first N of MOTIONS
    num_shapes: int = 0  # 0: any shape, the class is the motion; N: the class is (one of N shapes, motion)
    background: str = "textured"  # one of BACKGROUNDS
    width: int = 112
    height: int = 112
    min_frames: int = 32
    max_frames: int = 48
    fps: int = 30
    seed: int = 0

    name = "demo"

    def __post_init__(self) -> None:
        if not 2 <= self.num_motions <= len(MOTIONS):
            raise SourceError(f"demo num_motions must be in 2..{len(MOTIONS)}, got {self.num_motions}")
        if self.num_shapes and not (2 <= self.num_shapes <= len(_SHAPES) and self.num_motions <= 4):
            raise SourceError(
                f"demo num_shapes must be 0 or 2..{len(_SHAPES)} with at most 4 motions (a disc's "
                f"turn is invisible), got {self.num_shapes} shapes and {self.num_motions} motions"
            )
        if self.background not in BACKGROUNDS:
            raise SourceError(f"demo background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.width % 2 or self.height % 2 or min(self.width, self.height) < 16:
            raise SourceError(f"demo width/height must be even and >= 16, got {self.width}x{self.height}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise SourceError(
                f"demo frames need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}"
            )
        if self.num_videos < 1:
            raise SourceError(f"demo num_videos must be >= 1, got {self.num_videos}")

    def list_items(self) -> ItemList:
        classes = self.classes()
        items = []
        for index, label in enumerate(self._labels(len(classes))):
            shape = _SHAPES[label // self.num_motions] if self.num_shapes else None
            params = {
                "seed": self.seed,
                "index": index,
                "motion": MOTIONS[label % self.num_motions],
                "width": self.width,
                "height": self.height,
                "min_frames": self.min_frames,
                "max_frames": self.max_frames,
                "fps": self.fps,
            }
            if self.num_shapes or self.background != "textured":  # the original set's items stay as they were
                params.update(shape=shape, background=self.background)
            items.append(
                Item(
                    id=f"demo{self.seed}_{index:06d}",
                    kind="demo",
                    label=label,
                    label_name=classes[label],
                    params=params,
                )
            )
        return ItemList(items=items, classes=classes)

    def _labels(self, num_classes: int) -> list[int]:
        """Balanced labels in a seeded order. Shape-and-motion sets: each block of `num_classes` consecutive videos
        holds every class once, in an order drawn from (seed, block), so labels do not depend on the set's size and
        the first N videos of a larger set with the same arguments are the set of N (the demo's labelled subset is
        such a prefix). Motion-only sets keep their original order (a permutation of the whole set), so sets made
        before stay byte for byte the same."""
        if self.num_shapes:
            blocks = -(-self.num_videos // num_classes)
            order = np.concatenate(
                [np.random.default_rng([self.seed, 0x5EED, block]).permutation(num_classes) for block in range(blocks)]
            )
            return [int(label) for label in order[: self.num_videos]]
        order = np.random.default_rng([self.seed, 0x5EED]).permutation(self.num_videos)
        return [int(position % num_classes) for position in order]

    def classes(self) -> list[str]:
        motions = list(MOTIONS[: self.num_motions])
        if not self.num_shapes:
            return motions
        return [f"{shape}_{motion}" for shape in _SHAPES[: self.num_shapes] for motion in motions]


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


def render_demo_video(
    seed: int,
    index: int,
    motion: str,
    width: int,
    height: int,
    min_frames: int,
    max_frames: int,
    fps: int,
    shape: str | None = None,
    background: str = "textured",
) -> tuple[bytes, VideoInfo]:
    """`shape` None: drawn at random (the same draw as always, so the original set is unchanged)."""
    rng = np.random.default_rng([seed, index])
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    drawn = _SHAPES[int(rng.integers(0, 2 if motion.startswith("rotate") else len(_SHAPES)))]
    shape = shape or drawn
    colour = vivid_colour(rng)
    backdrop = textured_background(rng, height, width)
    if background == "flat":
        backdrop = np.broadcast_to(backdrop.mean(axis=(0, 1)), backdrop.shape)
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
