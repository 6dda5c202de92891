"""A picture of what a MaskFeat model predicts: target vs predicted HOG on the masked tokens of one clip.

For a few temporal tokens of one clip of a training batch, one row each: the frame the HOG target is computed on
(the first frame of the temporal token) with its masked tokens shaded, the target HOG and the predicted HOG. HOG is
drawn as scikit-image draws it: in each cell one line per orientation bin through the cell centre, along the edge
direction (perpendicular to the gradient at the bin's mid-angle), as bright as the bin's value; lines add up. The
bins are those of the model's target (docs/design.md §2): per token, `(colour·bins + bin)·4 + dy·2 + dx`, unsigned bins
of 180°/bins where bin k holds gradients whose angle from the downward image axis towards the rightward one lies
in [k, k+1)·180°/bins. Colour channels are summed per cell; predicted values below zero (regression overshoot) count
as zero. Unmasked tokens are left blank: only masked tokens enter the loss.

`hog_panels` computes the rows (arrays, for any use), `draw_hog_picture` writes them as a PNG, `recipe_hog_picture`
does both for the first training batch of a pretraining recipe whose `model.init` names MaskFeat weights
(`tools/hog_picture.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence

import einops
import numpy as np
import torch
from skimage.draw import line as draw_line
from torch import nn

MASK_SHADE = (1.0, 0.25, 0.1, 0.45)  # RGBA laid over masked tokens of the input frame
BLANK = "#d0d0d0"  # unmasked tokens in the HOG panels


def unpack_tokens(features: torch.Tensor, bins: int, cells_per_side: int) -> torch.Tensor:
    """Per-token HOG features …×Ht×Wt×D, D = colours·bins·cells_per_side², ordered (colour·bins + bin)·cells² +
    dy·cells_per_side + dx → per-cell histograms …×(Ht·cells_per_side)×(Wt·cells_per_side)×colours×bins."""
    if features.shape[-1] % (bins * cells_per_side**2):
        raise ValueError(
            f"HOG features of {features.shape[-1]} values per token are not colours × {bins} bins × "
            f"{cells_per_side}² cells"
        )
    return einops.rearrange(
        features, "... ht wt (c k dy dx) -> ... (ht dy) (wt dx) c k", k=bins, dy=cells_per_side, dx=cells_per_side
    )


def orientation_glyphs(bins: int, cell_pixels: int) -> np.ndarray:
    """bins×P×P float images (P = cell_pixels): bin k's line through the cell centre along the edge direction of
    its mid-angle θ = (k + ½)·180°/bins. The gradient of θ points (down, right) = (cos θ, sin θ), so the edge runs
    (−sin θ, cos θ): bin of vertical edges (θ = 90°) → vertical line, of horizontal edges (θ ≈ 0°) → horizontal."""
    if bins < 1 or cell_pixels < 3:
        raise ValueError(f"orientation_glyphs: bins={bins} must be ≥ 1 and cell_pixels={cell_pixels} ≥ 3")
    centre, radius = cell_pixels // 2, cell_pixels // 2 - 1
    glyphs = np.zeros((bins, cell_pixels, cell_pixels), dtype=np.float32)
    for k in range(bins):
        theta = math.pi * (k + 0.5) / bins
        d_row, d_col = -radius * math.sin(theta), radius * math.cos(theta)
        rows, cols = draw_line(
            round(centre - d_row), round(centre - d_col), round(centre + d_row), round(centre + d_col)
        )
        glyphs[k, rows, cols] = 1.0
    return glyphs


def glyph_image(cells: np.ndarray, cell_pixels: int) -> np.ndarray:
    """Cell histograms Hc×Wc×bins → Hc·P × Wc·P image (P = cell_pixels), each cell the sum of its bins' lines weighted
    by the bin values."""
    rows, cols, bins = cells.shape
    glyphs = orientation_glyphs(bins, cell_pixels)
    image = np.einsum("rck,kyx->rycx", cells.astype(np.float32), glyphs)
    return image.reshape(rows * cell_pixels, cols * cell_pixels)


@dataclass(frozen=True)
class HogPanel:
    """One temporal token of the clip: the frame HOG is computed on and both HOGs as glyph images."""

    step: int  # temporal token index
    frame: np.ndarray  # H×W×3 float in [0, 1], the clip de-normalised
    masked: np.ndarray  # Ht×Wt bool, the token mask on the model's output grid
    target: np.ndarray  # glyph image, NaN on unmasked tokens
    predicted: np.ndarray  # glyph image, NaN on unmasked tokens
    masked_mse: float  # mean squared error over this step's masked tokens (the loss's units)


@torch.no_grad()
def hog_panels(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    mean: Sequence[float],
    std: Sequence[float],
    clip: int = 0,
    max_steps: int = 4,
    cell_pixels: int = 16,
) -> list[HogPanel]:
    """Runs `model(batch)` (a MaskFeat model, in eval mode) and returns up to `max_steps` panels of clip `clip`,
    spread evenly over the temporal tokens that have masked tokens. `mean` and `std` are the loader's normalisation
    (`data.mean`, `data.std`), to show the frame as the model saw it."""
    hog = getattr(model, "hog", None)
    if hog is None:
        raise ValueError(
            f"{type(model).__name__} predicts no HOG: a picture of HOG needs a MaskFeat model (a pretraining model)"
        )
    video = batch["video"]
    if not 0 <= clip < video.shape[0]:
        raise ValueError(f"clip {clip} is not in a batch of {video.shape[0]} clips")
    outputs = model(batch)
    target, predicted = outputs["target"][clip].float().cpu(), outputs["pred"][clip].float().cpu()
    mask = outputs["mask"][clip].cpu()
    steps = [int(s) for s in torch.nonzero(mask.flatten(1).any(dim=1)).flatten()]
    if not steps:
        raise ValueError(
            f"clip {clip} ({batch['key'][clip] if 'key' in batch else 'of the batch'}) has no masked token to show"
        )
    steps = [steps[i] for i in sorted({round(j) for j in np.linspace(0, len(steps) - 1, min(max_steps, len(steps)))})]

    cells_per_side = hog.token_size // hog.cell_size
    cell_mask = mask.repeat_interleave(cells_per_side, 1).repeat_interleave(cells_per_side, 2)
    pixel_mask = np.kron(cell_mask.numpy(), np.ones((1, cell_pixels, cell_pixels))).astype(bool)
    target_cells = unpack_tokens(target, hog.bins, cells_per_side).sum(dim=-2)
    predicted_cells = unpack_tokens(predicted, hog.bins, cells_per_side).clamp(min=0).sum(dim=-2)
    frames = video[clip].float().cpu() * torch.tensor(std).view(-1, 1, 1, 1) + torch.tensor(mean).view(-1, 1, 1, 1)
    panels = []
    for step in steps:
        blank = ~pixel_mask[step]
        glyphs = [glyph_image(cells[step].numpy(), cell_pixels) for cells in (target_cells, predicted_cells)]
        for image in glyphs:
            image[blank] = np.nan
        error = (predicted[step] - target[step]).pow(2).mean(dim=-1)[mask[step]].mean()
        frame = frames[:, step * hog.temporal_stride].permute(1, 2, 0).clamp(0, 1).numpy()
        panels.append(HogPanel(step, frame, mask[step].numpy(), glyphs[0], glyphs[1], float(error)))
    return panels


def draw_hog_picture(panels: Sequence[HogPanel], out: str | Path, title: str = "") -> Path:
    """PNG at `out`: one row per panel, columns input (masked tokens shaded), target HOG, predicted HOG, both HOG
    columns on one brightness scale: white at the 99th percentile of the target's drawn line values (the maximum would
    be a cell centre, where all its lines add up, and leave the lines dim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("draw_hog_picture: no panels to draw")
    cmap = plt.get_cmap("gray").with_extremes(bad=BLANK)
    lines = np.concatenate([p.target[p.target > 0] for p in panels])
    vmax = float(np.percentile(lines, 99)) if lines.size else 1.0
    fig, axes = plt.subplots(len(panels), 3, figsize=(7.5, 2.5 * len(panels) + 0.4), dpi=100, squeeze=False)
    for row, panel in zip(axes, panels):
        height, width = panel.frame.shape[:2]
        shade = np.zeros((*panel.masked.shape, 4))
        shade[panel.masked] = MASK_SHADE
        row[0].imshow(panel.frame, interpolation="nearest")
        row[0].imshow(shade, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        row[0].set_title(f"input, time token {panel.step} (masked shaded)", fontsize=9)
        row[1].imshow(panel.target, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        row[1].set_title("target HOG (masked tokens)", fontsize=9)
        row[2].imshow(panel.predicted, cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        row[2].set_title(f"predicted HOG (MSE {panel.masked_mse:.4f})", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
