"""Drawing for the procedural demo sets (`demo` shards, `demo-ava` movies): shapes, a static background, colours.

Everything is numpy on a pixel grid (`xx`, `yy`: pixel-centre coordinates, x to the right, y down). A shape's
centre, angle and radius may be scalars (one H×W mask) or arrays of one value per frame (a T×H×W mask in one call).
Angles grow clockwise on screen (image y points down).
"""

from __future__ import annotations

import numpy as np

# Half the distance between opposite sides of `polygon`'s square (its half-diagonal is this times sqrt 2).
SQUARE_HALF_SIDE = 0.8
ELLIPSE_MINOR = 0.6  # the ellipse's half-width across, relative to its radius (half-length along its angle)


def polygon(shape: str, radius) -> np.ndarray:
    """Vertices (…×N×2, x/y, centred at 0) of a convex polygon, counterclockwise in image coordinates; one polygon
    per value of `radius` (a scalar gives N×2)."""
    radius = np.asarray(radius, dtype=np.float64)[..., None, None]
    if shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        return radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    if shape == "bar":
        return radius * np.array([[-1.0, -0.35], [1.0, -0.35], [1.0, 0.35], [-1.0, 0.35]])
    return radius * SQUARE_HALF_SIDE * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])


def inside_polygon(xx: np.ndarray, yy: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Whether each pixel lies inside the convex polygon `vertices` (…×N×2, counterclockwise); leading dimensions
    of `vertices` (one polygon per frame) come first in the result."""
    following = np.roll(vertices, -1, axis=-2)
    inside = None
    for corner in range(vertices.shape[-2]):
        (x0, y0), (x1, y1) = (np.moveaxis(v[..., corner, :, None, None], -3, 0) for v in (vertices, following))
        edge = (x1 - x0) * (yy - y0) - (y1 - y0) * (xx - x0) >= 0
        inside = edge if inside is None else inside & edge
    return inside


def shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, centre_x, centre_y, angle, radius) -> np.ndarray:
    """Pixels covered by `shape` ("disc", "ellipse" or a `polygon` shape) centred at (centre_x, centre_y), turned
    by `angle` radians, of size `radius`; scalars give one H×W mask, arrays of T values a T×H×W one."""
    centre_x, centre_y, angle, radius = np.broadcast_arrays(
        *(np.asarray(value, dtype=np.float64) for value in (centre_x, centre_y, angle, radius))
    )
    per_frame = [value[..., None, None] for value in (centre_x, centre_y, angle, radius)]
    if shape == "disc":
        x, y, _, r = per_frame
        return (xx - x) ** 2 + (yy - y) ** 2 <= r**2
    if shape == "ellipse":
        along, across = local_coordinates(xx, yy, *per_frame[:3])
        r = per_frame[3]
        return (along / r) ** 2 + (across / (ELLIPSE_MINOR * r)) ** 2 <= 1.0
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    centre = np.stack([centre_x, centre_y], -1)[..., None, :]
    return inside_polygon(xx, yy, polygon(shape, radius) @ np.swapaxes(rotation, -1, -2) + centre)


def local_coordinates(xx: np.ndarray, yy: np.ndarray, centre_x, centre_y, angle) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a shape's own frame: along its angle and across it (arguments broadcast together)."""
    dx, dy = xx - centre_x, yy - centre_y
    cos, sin = np.cos(angle), np.sin(angle)
    return dx * cos + dy * sin, dy * cos - dx * sin


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dim colour gradient with a few faint static blobs (texture that does not move), H×W×3 floats in [0, 255]."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = rng.uniform(20, 90, 3) + rng.uniform(-30, 30, 3) * (xx[..., None] * rng.uniform(-1, 1) + yy[..., None])
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        base += blob[..., None] * rng.uniform(-25, 25, 3)
    return np.clip(base, 0, 255)


def vivid_colour(rng: np.random.Generator, brightest: tuple[float, float] = (150, 255)) -> np.ndarray:
    """A saturated RGB colour: one channel drawn from `brightest` (so no colour is darker than its low end there),
    the other two scaled down."""
    return rng.uniform(*brightest, 3) * rng.permutation([1.0, rng.uniform(0.3, 1.0), rng.uniform(0.0, 0.6)])
