"""Mask generators for MaskFeat pretraining (docs/design.md §3), run in the data loader on CPU.

A mask is a boolean array over the *mask grid* (True = masked). For a 16×224² clip the grid is
8×7×7: one unit is 2 frames × 32×32 pixels, i.e. 1×2×2 output tokens. Single images use the 1×14×14
grid of 16×16-pixel tokens.

Cube masking is BEiT's block masking extended in time, as in MaskFeat's release: each cube draws a
spatial area uniform in [min_area, H'·W'], a log-uniform aspect ratio in [0.3, 1/0.3], rounds its
height and width and is accepted only if strictly smaller than the grid (h < H', w < W'), takes a
temporal extent uniform in [1, T'] and a uniform position; it is kept if it adds between 1 and the
remaining budget of new units. Up to `max_tries` draws per cube; masking stops when the budget is
met or a cube finds no placement, so the result is at most the budget and usually exactly it.

Every generator takes a `numpy.random.Generator` and is deterministic given its state, so a loader
that seeds one RNG per sample gets the same masks after a resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

MASK_MODES = ("cube", "tube", "frame", "block", "none")
MIN_ASPECT = 0.3
VIDEO_UNIT_PIXELS = 32  # a video mask unit spans 2×2 output tokens of 16 pixels
VIDEO_UNIT_FRAMES = 2  # ... and one temporal token of 2 frames
IMAGE_UNIT_PIXELS = 16  # an image mask unit is one 16×16 token

Grid = tuple[int, int, int]


def mask_grid(num_frames: int, crop_size: int) -> Grid:
    """(T', H', W') of the mask for a clip of `num_frames` × `crop_size`² pixels.

    Video: (T // 2, crop // 32, crop // 32), e.g. 8×7×7 for 16×224². Image (T == 1): (1, crop // 16,
    crop // 16), e.g. 1×14×14 at 224. Sizes that would leave part of the clip outside the grid are
    rejected, because the model upsamples the mask by exact factors.
    """
    if num_frames < 1 or crop_size < 1:
        raise ValueError(f"mask_grid: num_frames={num_frames} and crop_size={crop_size} must be positive")
    if num_frames == 1:
        unit, frames = IMAGE_UNIT_PIXELS, 1
    else:
        unit = VIDEO_UNIT_PIXELS
        if num_frames % VIDEO_UNIT_FRAMES:
            raise ValueError(
                f"mask_grid: num_frames={num_frames} must be 1 (image) or a multiple of "
                f"{VIDEO_UNIT_FRAMES} (one temporal token per {VIDEO_UNIT_FRAMES} frames)"
            )
        frames = num_frames // VIDEO_UNIT_FRAMES
    if crop_size % unit:
        raise ValueError(
            f"mask_grid: crop_size={crop_size} must be a multiple of {unit} pixels "
            f"(one mask unit) for num_frames={num_frames}"
        )
    return frames, crop_size // unit, crop_size // unit


@dataclass(frozen=True)
class Cube:
    """One accepted cube: its corner (front, top, left) and extents, in mask units."""

    front: int
    top: int
    left: int
    frames: int
    height: int
    width: int


@dataclass(frozen=True)
class CubeRule:
    """How cubes are drawn. A 2-D block is a cube with max_frames = 1."""

    budget: int  # units to mask in total
    min_area: float  # spatial area drawn uniform in [min_area, max_area]
    max_area: Optional[float]  # None: the remaining budget (BEiT's 2-D rule)
    max_frames: int  # temporal extent drawn uniform in [1, max_frames]
    max_tries: int  # draws per cube before giving up
    min_aspect: float = MIN_ASPECT


def sample_cubes(rng: np.random.Generator, grid: Grid, rule: CubeRule) -> tuple[np.ndarray, list[Cube]]:
    """Mask of shape `grid` and the cubes that made it, in the order they were placed."""
    mask = np.zeros(grid, dtype=bool)
    cubes: list[Cube] = []
    masked = 0
    while masked < rule.budget:
        placed = _place_cube(rng, mask, rule, rule.budget - masked)
        if placed is None:
            break
        cube, added = placed
        cubes.append(cube)
        masked += added
    return mask, cubes


def _place_cube(
    rng: np.random.Generator, mask: np.ndarray, rule: CubeRule, remaining: int
) -> Optional[tuple[Cube, int]]:
    """Mask one cube that adds 1..remaining new units; None when max_tries draws all fail."""
    grid_t, grid_h, grid_w = mask.shape
    max_area = remaining if rule.max_area is None else rule.max_area
    log_aspect = math.log(rule.min_aspect)
    for _ in range(rule.max_tries):
        # lo + (hi - lo)·u as Python's random.uniform: also defined when the remaining budget is
        # below min_area (BEiT's 2-D rule), where it draws from [remaining, min_area].
        area = rule.min_area + (max_area - rule.min_area) * rng.random()
        aspect = math.exp(log_aspect * (1.0 - 2.0 * rng.random()))
        height = round(math.sqrt(area * aspect))
        width = round(math.sqrt(area / aspect))
        frames = int(rng.integers(1, rule.max_frames + 1))
        if height >= grid_h or width >= grid_w:  # strict, as in the official generator
            continue
        top = int(rng.integers(0, grid_h - height + 1))
        left = int(rng.integers(0, grid_w - width + 1))
        front = int(rng.integers(0, grid_t - frames + 1))
        region = mask[front : front + frames, top : top + height, left : left + width]
        added = region.size - int(np.count_nonzero(region))
        if 0 < added <= remaining:
            region[...] = True
            return Cube(front, top, left, frames, height, width), added
    return None


@dataclass(frozen=True)
class MaskGenerator:
    """Picklable mask generator (loader workers receive it); call it with a per-sample RNG."""

    mode: str
    grid: Grid
    budget: int  # units to mask: of the grid (cube), of each time step (tube, block), frames (frame)
    rule: Optional[CubeRule]  # cube/tube/block only

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        if self.mode == "cube":
            return sample_cubes(rng, self.grid, self.rule)[0]
        if self.mode in ("tube", "block"):
            plane = sample_cubes(rng, (1, *self.grid[1:]), self.rule)[0]
            return np.repeat(plane, self.grid[0], axis=0)
        mask = np.zeros(self.grid, dtype=bool)
        if self.mode == "frame":
            mask[rng.choice(self.grid[0], size=self.budget, replace=False)] = True
        return mask

    def cubes(self, rng: np.random.Generator) -> list[Cube]:
        """The cubes one call with an RNG in this state would place (cube/tube/block modes)."""
        if self.rule is None:
            raise ValueError(f"mask mode {self.mode!r} places no cubes")
        grid = self.grid if self.mode == "cube" else (1, *self.grid[1:])
        return sample_cubes(rng, grid, self.rule)[1]


def build_mask_generator(
    mode: str, grid: Grid, ratio: float = 0.4, min_units: int = 9, max_tries: int = 100
) -> MaskGenerator:
    """Generator for `mode` on `grid` (from `mask_grid`).

    cube:  3-D cubes on T'×H'×W', budget round(T'·H'·W'·ratio) (157 of 392 at 8×7×7), face area in
           [min_units, H'·W'] (9..49 at 7×7: 49 // 5 = 9).
    tube:  one 2-D block mask on H'×W' (budget round(H'·W'·ratio), block area in [min_units, remaining
           budget] as BEiT) repeated over all T'.
    frame: round(T'·ratio) whole time steps.
    block: 2-D BEiT block masking for images (grid 1×H'×W'), e.g. 78 of 196 at 14×14 with min_units 15.
    none:  nothing masked.
    `min_units` is capped at (H'-1)·(W'-1), the largest face the strict h < H', w < W' rule can place,
    so that small grids (e.g. 3×3) still mask.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"mask mode {mode!r} is not one of {MASK_MODES}")
    grid_t, grid_h, grid_w = grid = tuple(int(n) for n in grid)
    if min(grid) < 1:
        raise ValueError(f"mask grid {grid} must be positive in every dimension")
    if mode == "none":
        return MaskGenerator(mode, grid, 0, None)
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio {ratio} must lie in (0, 1) for mode {mode!r}")
    if mode == "frame":
        return MaskGenerator(mode, grid, _budget(mode, grid_t, ratio), None)
    if mode == "block" and grid_t != 1:
        raise ValueError(
            f"mask mode 'block' is for single images (grid 1×H×W), got grid {grid}; use 'tube' or 'cube' for video"
        )
    if grid_h < 2 or grid_w < 2:
        raise ValueError(f"mask mode {mode!r} needs a grid of at least 2×2 units spatially, got {grid}")
    if min_units < 1 or max_tries < 1:
        raise ValueError(f"min_units={min_units} and max_tries={max_tries} must be at least 1")
    min_area = min(min_units, (grid_h - 1) * (grid_w - 1))
    if mode == "cube":
        budget = _budget(mode, grid_t * grid_h * grid_w, ratio)
        rule = CubeRule(budget, min_area, grid_h * grid_w, grid_t, max_tries)
    else:
        budget = _budget(mode, grid_h * grid_w, ratio)
        rule = CubeRule(budget, min_area, None, 1, max_tries)
    return MaskGenerator(mode, grid, budget, rule)


def _budget(mode: str, units: int, ratio: float) -> int:
    budget = round(units * ratio)
    if budget < 1:
        raise ValueError(f"mask mode {mode!r} with ratio {ratio} masks round({units}·{ratio}) = 0 units")
    return budget
