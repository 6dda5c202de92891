"""RandAugment for clips, in plain torch: one op and one magnitude per clip, applied to every frame.

Input and output: uint8 `T×C×H×W` clips (RGB), as `TrainTransform` makes them inside a loader worker. Built from a
timm-style spec (`RandAugment.from_spec("rand-m7-mstd0.5-inc1")`); every draw comes from the sample's
`numpy.random.Generator`, so a clip's augmentation depends only on its own seed.

Compared against timm `timm/data/auto_augment.py` (`rand_augment_transform`, `AugmentOp` and the Pillow calls its
ops make) and its port in PySlowFast `slowfast/datasets/rand_augment.py`, as the MaskFeat fine-tuning config
`configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml` uses it (`AUG.AA_TYPE: rand-m7-mstd0.5-inc1`, PySlowFast hands
the list of a clip's frames to each op, so one op, magnitude and sign serve every frame). The same as there:

- spec sections `m` (magnitude, default 10), `n` (ops per clip, default 2), `p` (probability each drawn op is
  applied, default 0.5), `mstd` (std of the normal noise on the magnitude; above 100: uniform on [0, m]),
  `mmax` (upper clip of the magnitude, default 10), `inc1` (the "increasing" op set);
- ops drawn uniformly with replacement from the 15 of the set; the magnitude clipped to [0, mmax]; the level to
  argument mappings of current timm (rotate ±30°, shear ±0.3, translate ±45 % of the side, posterize 4..0 bits,
  solarize threshold 256..0, solarize-add 0..110, enhancement factors 0.1..1.9, with a random sign where timm
  draws one);
- pixels a warp brings in from outside the frame are grey 128 in every channel (PySlowFast passes no `img_mean`,
  so timm's `_FILL`);
- the colour ops equal Pillow's `ImageOps`/`ImageEnhance` on each frame seen as one image: blends truncate as
  Pillow's `ImagingBlend` does, Sharpness blends with Pillow's SMOOTH filter (rounded, frame border kept), the
  greyscale of Color and Contrast is Pillow's `L` conversion, AutoContrast, Equalize and Contrast take their
  statistics per frame and channel (per frame for Contrast's mean) as Pillow does for one image.

Deliberate differences:

- warps (Rotate, ShearX/Y, TranslateX/YRel) are bilinear and rounded to the nearest level, where PySlowFast
  asks Pillow for bicubic (Pillow's affine bicubic kernel, a = −1, is not what `grid_sample` offers) and Pillow
  truncates. The geometry is Pillow's: its affine matrices, pixel centres at +0.5, rotation about the frame
  centre, a sample point outside the frame gives the fill colour and one inside takes neighbours clamped to the
  border;
- PySlowFast runs RandAugment on the whole decoded frames before the random resized crop; here it runs on the
  crop (cost proportional to the output, as every transform in `transforms.py`), so translations are relative
  to the crop and AutoContrast/Equalize/Contrast see the crop's statistics;
- `inc0` means the plain op set (timm reads any `inc` section as on: `bool("0")` is true), and a section that
  timm would skip or assert on is an error naming it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

# The magnitude scale: m10 is the strongest level of every op (timm's _LEVEL_DENOM).
LEVEL_SCALE = 10.0
# Grey brought in by warps at the frame's edges (timm's _FILL).
FILL = 128


# --- colour ops (Pillow's semantics) ---------------------------------------------------------------------------


def _blend(degenerate: torch.Tensor, clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Pillow's `Image.blend(degenerate, clip, factor)`: float32 `d + factor·(x − d)`, clipped, truncated."""
    out = clip.to(torch.float32).sub_(degenerate).mul_(factor).add_(degenerate)
    return out.clamp_(0, 255).to(torch.uint8)


def _greyscale(clip: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB → L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, int32 T×1×H×W."""
    rgb = clip.to(torch.int32)
    luma = rgb[:, 0:1] * 19595 + rgb[:, 1:2] * 38470 + rgb[:, 2:3] * 7471 + 0x8000
    return luma >> 16


def _plane_levels(clip: torch.Tensor) -> torch.Tensor:
    """int64 position of each pixel in the concatenated 256-entry tables of the clip's frame-channel planes."""
    frames, channels = clip.shape[:2]
    plane_offsets = torch.arange(frames * channels, dtype=torch.int64).mul_(256).view(frames, channels, 1, 1)
    return clip.to(torch.int64) + plane_offsets


def auto_contrast(clip: torch.Tensor) -> torch.Tensor:
    """Each frame's channel stretched so its darkest value becomes 0 and its brightest 255 (`ImageOps.autocontrast`)."""
    low = clip.amin(dim=(2, 3)).to(torch.float64)
    high = clip.amax(dim=(2, 3)).to(torch.float64)
    flat = high <= low
    # tensor ÷ tensor: `255.0 / tensor` multiplies by a rounded reciprocal and then differs from Pillow
    scale = torch.full_like(low, 255.0) / torch.where(flat, 1.0, high - low)
    levels = torch.arange(256, dtype=torch.float64)
    luts = (levels * scale[..., None] - (low * scale)[..., None]).trunc_().clamp_(0, 255)
    luts = torch.where(flat[..., None], levels, luts)
    return luts.to(torch.uint8).reshape(-1)[_plane_levels(clip)]


def equalize(clip: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each frame's channel, Pillow's table (`ImageOps.equalize`): levels advance by
    the pixel count below them in steps of (pixels not in the top level) // 255."""
    planes = clip.shape[0] * clip.shape[1]
    index = _plane_levels(clip)
    histograms = torch.bincount(index.reshape(-1), minlength=planes * 256).view(planes, 256)
    occupied = histograms > 0
    top_level = 255 - occupied.flip(1).to(torch.uint8).argmax(dim=1)
    top_count = histograms.gather(1, top_level[:, None])[:, 0]
    step = (histograms.sum(dim=1) - top_count) // 255
    below = histograms.cumsum(dim=1) - histograms
    luts = ((step // 2)[:, None] + below) // step.clamp(min=1)[:, None]
    keep = (occupied.sum(dim=1) <= 1) | (step == 0)
    luts = torch.where(keep[:, None], torch.arange(256), luts.clamp_(max=255))
    return luts.to(torch.uint8).reshape(-1)[index]


def invert(clip: torch.Tensor) -> torch.Tensor:
    return 255 - clip


def posterize(clip: torch.Tensor, bits: int) -> torch.Tensor:
    """Keep the `bits` most significant bits (8 or more: unchanged; 0 or fewer: black, as the Pillow of timm's
    and PySlowFast's time gave, where current Pillow refuses 0)."""
    bits = min(max(int(bits), 0), 8)
    return clip & ((0xFF << (8 - bits)) & 0xFF)


def solarize(clip: torch.Tensor, threshold: int) -> torch.Tensor:
    """Invert the values at or above `threshold` (256: nothing changes)."""
    if threshold > 255:
        return clip
    return torch.where(clip < threshold, clip, 255 - clip)


def solarize_add(clip: torch.Tensor, addition: int, threshold: int = 128) -> torch.Tensor:
    """Add `addition` (saturating at 255) to the values below `threshold` (timm's `solarize_add`)."""
    raised = (clip.to(torch.int16) + addition).clamp_(0, 255).to(torch.uint8)
    return torch.where(clip < threshold, raised, clip)


def color(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Saturation: blend from the frame's greyscale (0) through the frame (1) and beyond (`ImageEnhance.Color`)."""
    return _blend(_greyscale(clip).to(torch.float32), clip, factor)


def contrast(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend from the frame's mean grey, rounded to a level (`ImageEnhance.Contrast`)."""
    grey = _greyscale(clip)
    mean = grey.sum(dim=(1, 2, 3), dtype=torch.int64).to(torch.float64) / grey[0].numel()
    return _blend(torch.floor(mean + 0.5).to(torch.float32).view(-1, 1, 1, 1), clip, factor)


def brightness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend from black (`ImageEnhance.Brightness`)."""
    return _blend(torch.zeros((), dtype=torch.float32), clip, factor)


def sharpness(clip: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend from Pillow's SMOOTH filter of the frame (`ImageEnhance.Sharpness`): the 3×3 kernel
    [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 rounded to a level, border pixels kept."""
    height, width = clip.shape[-2:]
    smooth = clip.to(torch.float32)
    if height > 2 and width > 2:
        # Sums of integer levels are exact in float32, and a sum over 13 is never halfway between two levels, so
        # rounding it gives Pillow's result whatever the order of its float kernel products.
        columns = smooth[..., :-2, :] + smooth[..., 1:-1, :] + smooth[..., 2:, :]
        weighted = columns[..., :-2] + columns[..., 1:-1] + columns[..., 2:] + 4 * smooth[..., 1:-1, 1:-1]
        smooth[..., 1:-1, 1:-1] = weighted.add_(6.5).div_(13).floor_()
    return _blend(smooth, clip, factor)


# --- warps (Pillow's affine geometry) ---------------------------------------------------------------------------


def _affine(clip: torch.Tensor, matrix: tuple[float, float, float, float, float, float]) -> torch.Tensor:
    """Pillow's `Image.transform(size, AFFINE, matrix, fillcolor=128)`, bilinear: the output pixel centred at
    (x + ½, y + ½) samples the source at (a x' + b y' + c, d x' + e y' + f) with x', y' those centres; a point
    outside [0, W) × [0, H) gives the fill, one inside interpolates with neighbours clamped to the border. One
    sampling grid for the clip, so every frame moves alike."""
    frames, _, height, width = clip.shape
    a, b, c, d, e, f = matrix
    # The grid in float64 so the inside/outside decision is Pillow's (which computes in double).
    centre_y = torch.arange(height, dtype=torch.float64).add_(0.5).view(-1, 1)
    centre_x = torch.arange(width, dtype=torch.float64).add_(0.5).view(1, -1)
    source_x = a * centre_x + b * centre_y + c
    source_y = d * centre_x + e * centre_y + f
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    grid = torch.stack((source_x * (2.0 / width) - 1.0, source_y * (2.0 / height) - 1.0), dim=-1)
    grid = grid.to(torch.float32).expand(frames, height, width, 2)
    warped = F.grid_sample(clip.to(torch.float32), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(inside, warped.round_(), float(FILL)).to(torch.uint8)


def rotate(clip: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise rotation about the frame centre (`Image.rotate`)."""
    height, width = clip.shape[-2:]
    angle = -math.radians(degrees)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    centre_x, centre_y = width / 2, height / 2
    offset_x = cos * -centre_x + sin * -centre_y + centre_x
    offset_y = -sin * -centre_x + cos * -centre_y + centre_y
    return _affine(clip, (cos, sin, offset_x, -sin, cos, offset_y))


def shear_x(clip: torch.Tensor, factor: float) -> torch.Tensor:
    return _affine(clip, (1.0, factor, 0.0, 0.0, 1.0, 0.0))


def shear_y(clip: torch.Tensor, factor: float) -> torch.Tensor:
    return _affine(clip, (1.0, 0.0, 0.0, factor, 1.0, 0.0))


def translate_x_rel(clip: torch.Tensor, fraction: float) -> torch.Tensor:
    """Content moves left by `fraction` of the width (right when negative)."""
    return _affine(clip, (1.0, 0.0, fraction * clip.shape[-1], 0.0, 1.0, 0.0))


def translate_y_rel(clip: torch.Tensor, fraction: float) -> torch.Tensor:
    """Content moves up by `fraction` of the height (down when negative)."""
    return _affine(clip, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * clip.shape[-2]))


# --- magnitude → argument (timm's level functions) --------------------------------------------------------------


def _random_sign(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _rotate_level(magnitude: float, rng: np.random.Generator) -> float:
    return _random_sign(magnitude / LEVEL_SCALE * 30.0, rng)


def _shear_level(magnitude: float, rng: np.random.Generator) -> float:
    return _random_sign(magnitude / LEVEL_SCALE * 0.3, rng)


def _translate_level(magnitude: float, rng: np.random.Generator) -> float:
    return _random_sign(magnitude / LEVEL_SCALE * 0.45, rng)


def _posterize_level(magnitude: float, rng: np.random.Generator) -> int:
    return int(magnitude / LEVEL_SCALE * 4)


def _posterize_increasing_level(magnitude: float, rng: np.random.Generator) -> int:
    return 4 - _posterize_level(magnitude, rng)


def _solarize_level(magnitude: float, rng: np.random.Generator) -> int:
    return min(256, int(magnitude / LEVEL_SCALE * 256))


def _solarize_increasing_level(magnitude: float, rng: np.random.Generator) -> int:
    return 256 - _solarize_level(magnitude, rng)


def _solarize_add_level(magnitude: float, rng: np.random.Generator) -> int:
    return min(128, int(magnitude / LEVEL_SCALE * 110))


def _enhance_level(magnitude: float, rng: np.random.Generator) -> float:
    return magnitude / LEVEL_SCALE * 1.8 + 0.1


def _enhance_increasing_level(magnitude: float, rng: np.random.Generator) -> float:
    return max(0.1, 1.0 + _random_sign(magnitude / LEVEL_SCALE * 0.9, rng))


class Op(NamedTuple):
    apply: Callable[..., torch.Tensor]
    # magnitude → the op's argument, drawing a sign from the generator where the op has one; None: no argument
    level: Optional[Callable[[float, np.random.Generator], float]]


OPS: dict[str, Op] = {
    "AutoContrast": Op(auto_contrast, None),
    "Equalize": Op(equalize, None),
    "Invert": Op(invert, None),
    "Rotate": Op(rotate, _rotate_level),
    "Posterize": Op(posterize, _posterize_level),
    "PosterizeIncreasing": Op(posterize, _posterize_increasing_level),
    "Solarize": Op(solarize, _solarize_level),
    "SolarizeIncreasing": Op(solarize, _solarize_increasing_level),
    "SolarizeAdd": Op(solarize_add, _solarize_add_level),
    "Color": Op(color, _enhance_level),
    "ColorIncreasing": Op(color, _enhance_increasing_level),
    "Contrast": Op(contrast, _enhance_level),
    "ContrastIncreasing": Op(contrast, _enhance_increasing_level),
    "Brightness": Op(brightness, _enhance_level),
    "BrightnessIncreasing": Op(brightness, _enhance_increasing_level),
    "Sharpness": Op(sharpness, _enhance_level),
    "SharpnessIncreasing": Op(sharpness, _enhance_increasing_level),
    "ShearX": Op(shear_x, _shear_level),
    "ShearY": Op(shear_y, _shear_level),
    "TranslateXRel": Op(translate_x_rel, _translate_level),
    "TranslateYRel": Op(translate_y_rel, _translate_level),
}

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS.
PLAIN_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


class DrawnOp(NamedTuple):
    name: str
    argument: Optional[float]  # None for the ops that take none


def apply_op(clip: torch.Tensor, op: DrawnOp) -> torch.Tensor:
    """One op on a uint8 T×C×H×W clip, the same on every frame."""
    function = OPS[op.name].apply
    return function(clip) if op.argument is None else function(clip, op.argument)


_SECTION = re.compile(r"([a-z]+)(\d.*)")


@dataclass(frozen=True)
class RandAugment:
    """`num_ops` ops drawn with replacement from `ops`, each applied with probability `prob`, at magnitude
    `magnitude` plus normal noise of std `magnitude_std` (uniform on [0, magnitude] when infinite), clipped to
    [0, `magnitude_max`]. Build it with `from_spec`; `draw` tells what a generator state gives, `__call__`
    draws and applies."""

    ops: tuple[str, ...] = PLAIN_OPS
    num_ops: int = 2
    magnitude: float = LEVEL_SCALE
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_SCALE
    prob: float = 0.5

    def __post_init__(self):
        unknown = [name for name in self.ops if name not in OPS]
        if unknown or not self.ops:
            raise ValueError(f"RandAugment ops must be a non-empty subset of {sorted(OPS)}, got {self.ops}")

    @classmethod
    def from_spec(cls, spec: str) -> "RandAugment":
        """Parse a timm RandAugment spec: `rand` then dash-separated sections in any order, `m<int>`, `n<int>`,
        `p<float>`, `mstd<float>`, `mmax<int>`, `inc<0|1>`; e.g. `rand-m7-mstd0.5-inc1` (MaskFeat fine-tuning)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment spec {spec!r} must start with 'rand', got {parts[0]!r}")
        values: dict[str, str] = {}
        for part in parts[1:]:
            match = _SECTION.fullmatch(part)
            if match is None or match.group(1) not in ("m", "n", "p", "mstd", "mmax", "inc"):
                raise ValueError(
                    f"RandAugment spec {spec!r}: unknown section {part!r} "
                    "(known: m<int>, n<int>, p<float>, mstd<float>, mmax<int>, inc<0|1>)"
                )
            key, value = match.groups()
            if key in values:
                raise ValueError(f"RandAugment spec {spec!r}: section {key!r} given twice")
            values[key] = value

        def number(key: str, kind: type, default, low: float, high: float = math.inf):
            if key not in values:
                return default
            try:
                parsed = kind(values[key])
            except ValueError:
                parsed = None
            if parsed is None or not low <= parsed <= high:
                raise ValueError(
                    f"RandAugment spec {spec!r}: section {key + values[key]!r} needs "
                    f"{'an integer' if kind is int else 'a number'} in [{low}, {high}]"
                )
            return parsed

        magnitude_std = number("mstd", float, 0.0, 0.0)
        return cls(
            ops=INCREASING_OPS if number("inc", int, 0, 0, 1) else PLAIN_OPS,
            num_ops=number("n", int, 2, 1),
            magnitude=float(number("m", int, int(LEVEL_SCALE), 0)),
            magnitude_std=math.inf if magnitude_std > 100 else magnitude_std,
            magnitude_max=float(number("mmax", int, int(LEVEL_SCALE), 0)),
            prob=number("p", float, 0.5, 0.0, 1.0),
        )

    def draw(self, rng: np.random.Generator) -> list[DrawnOp]:
        """The ops one clip gets, with their arguments (ops that lose the probability draw are left out)."""
        drawn = []
        for index in rng.integers(0, len(self.ops), size=self.num_ops):
            name = self.ops[index]
            if rng.random() >= self.prob:
                continue
            if self.magnitude_std == math.inf:
                magnitude = rng.uniform(0.0, self.magnitude)
            elif self.magnitude_std > 0:
                magnitude = rng.normal(self.magnitude, self.magnitude_std)
            else:
                magnitude = self.magnitude
            magnitude = min(max(magnitude, 0.0), self.magnitude_max)
            level = OPS[name].level
            drawn.append(DrawnOp(name, None if level is None else level(magnitude, rng)))
        return drawn

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """uint8 T×C×H×W → uint8 T×C×H×W, every frame through the same ops with the same arguments."""
        for op in self.draw(rng):
            clip = apply_op(clip, op)
        return clip
