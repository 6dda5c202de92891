"""MaskFeat's HOG target (docs/design.md §2): the official variant, not scikit-image's.

Per colour channel: reflect-pad 1, 3×3 Sobel cross-correlation (wx = [[1,0,-1],[2,0,-2],[1,0,-1]],
wy = wxᵀ), magnitude sqrt(gx² + gy²), orientation bin floor(atan2(gx, gy) / π · 9) mod 9 (the
release's argument order: 9 unsigned 20° bins), hard binning, magnitudes summed over 8×8 cells,
L2 over the 9 bins of each (channel, cell). Video: frames 0, 2, 4, … (one per temporal token);
each 16×16 token gets its 2×2 cells → 3·9·4 = 108 values ordered (colour·9 + bin)·4 + dy·2 + dx.

Input: the clip's pixel values, uint8 as the loader ships them (any dtype is read as float32 values). On integer
values every Sobel gradient is an integer of at most 4·255 in magnitude, exact in float32, so each pixel's bin is the
formula's own: where a gradient cancels to exactly 0 (common on quantised frames) atan2 sees +0 and the bin is 0.
On normalised floats the same cancellation leaves ±1e-8 and flips such pixels between bins 0 and 8 (docs/design.md §2);
mean and std drop out of the target in exact arithmetic, so the pixel values give the target of the model input.

`HogTarget` never materialises a full-resolution tensor of bins: each pixel's magnitude is
scattered straight into its (bin, cell) slot, so the working set is a few full-resolution planes
(≈16 bytes per pixel and channel) instead of the ≥ 72 of a one-hot histogram. Sobel is computed
with shifted differences rather than a convolution (a 1-channel conv is slow on CPU and gains
nothing on GPU). `hog_reference` is the textbook version of the same formula, for tests and
benchmarks.

Optional Gaussian window (off in the official recipe): as in the re-implementation that used one,
a normalised 2-D Gaussian of `gaussian_window` pixels (std = gaussian_window // 2) is tiled over
the frame in non-overlapping windows and multiplies the magnitudes before binning.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from torch import nn

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
NORM_EPS = 1e-12  # as F.normalize: cells without any gradient stay all-zero


def gaussian_window_weights(size: int) -> torch.Tensor:
    """size×size Gaussian (std = size // 2, centred between pixels for even sizes), summing to 1."""
    offsets = torch.arange(size, dtype=torch.float32)
    offsets = (offsets - offsets.mean()) / (size // 2)
    profile = torch.exp(-0.5 * offsets**2)
    window = profile[:, None] * profile[None, :]
    return window / window.sum()


class HogTarget(nn.Module):
    """Video B×C×T×H×W (pixel values, uint8) → HOG targets B×T'×(H/token)×(W/token)×(C·bins·(token/cell)²), float32,
    no grad.

    T' = T / temporal_stride (frames 0, s, 2s, …); a single frame (T = 1, images) gives T' = 1.
    """

    def __init__(
        self,
        cell_size: int = 8,
        bins: int = 9,
        gaussian_window: int = 0,
        temporal_stride: int = 2,
        token_size: int = 16,
    ):
        super().__init__()
        if min(cell_size, bins, temporal_stride, token_size) < 1 or gaussian_window < 0:
            raise ValueError(
                f"HogTarget: cell_size={cell_size}, bins={bins}, temporal_stride={temporal_stride}, "
                f"token_size={token_size} must be positive and gaussian_window={gaussian_window} ≥ 0"
            )
        if token_size % cell_size:
            raise ValueError(f"HogTarget: token_size={token_size} must be a multiple of cell_size={cell_size}")
        self.cell_size = cell_size
        self.bins = bins
        self.gaussian_window = gaussian_window
        self.temporal_stride = temporal_stride
        self.token_size = token_size
        window = gaussian_window_weights(gaussian_window) if gaussian_window else None
        self.register_buffer("window", window, persistent=False)

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        _check_video(video, self.temporal_stride, self.token_size, self.gaussian_window)
        batch, channels, _, height, width = video.shape
        histograms = self._histograms(video, self.temporal_stride)  # (B·T'·C)×bins×cells
        group = self.token_size // self.cell_size  # cells per token side
        tokens_h, tokens_w = height // self.token_size, width // self.token_size
        # Cells are row-major (cell row = token row · group + dy), so one view splits them per token.
        tokens = histograms.view(-1, channels * self.bins, tokens_h, group, tokens_w, group)
        tokens = tokens.permute(0, 2, 4, 1, 3, 5)  # n, ty, tx, colour·bins, dy, dx
        return tokens.reshape(batch, -1, tokens_h, tokens_w, channels * self.bins * group * group)

    @torch.no_grad()
    def cell_histograms(self, images: torch.Tensor) -> torch.Tensor:
        """Images N×C×H×W → per-channel, L2-normalised cell histograms N×C×bins×(H/cell)×(W/cell)."""
        if images.dim() != 4:
            raise ValueError(f"HogTarget.cell_histograms expects N×C×H×W images, got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        _check_frame_size(height, width, self.cell_size, self.gaussian_window)
        histograms = self._histograms(images.unsqueeze(2), 1)
        return histograms.view(batch, channels, self.bins, height // self.cell_size, width // self.cell_size)

    def _histograms(self, video: torch.Tensor, temporal_stride: int) -> torch.Tensor:
        """Frames 0, s, 2s, … of B×C×T×H×W → normalised histograms (B·T'·C)×bins×cells (cells row-major).

        Intermediates are released as soon as they are used: the peak is about four full-resolution
        float planes per (frame, channel).
        """
        padded = _padded_frames(video, temporal_stride)
        planes, height, width = padded.shape[0], padded.shape[1] - 2, padded.shape[2] - 2
        gx, gy = _sobel(padded)
        del padded
        magnitude = torch.hypot(gx, gy)
        if self.window is not None:
            size = self.gaussian_window
            magnitude.view(planes, height // size, size, width // size, size).mul_(self.window[:, None, :])
        # Bin index in place of gx: floor(atan2(gx, gy) / π · bins) mod bins, the release's arithmetic.
        phase = gx.atan2_(gy)
        del gy
        slot = phase.div_(math.pi).mul_(self.bins).floor_().remainder_(self.bins).long()
        del phase, gx
        cells_w = width // self.cell_size
        cells = (height // self.cell_size) * cells_w
        rows = torch.arange(height, device=slot.device) // self.cell_size
        cols = torch.arange(width, device=slot.device) // self.cell_size
        slot.mul_(cells).add_(rows[:, None] * cells_w + cols[None, :])  # bin · cells + cell
        histograms = torch.zeros(planes, self.bins * cells, dtype=magnitude.dtype, device=slot.device)
        histograms.scatter_add_(1, slot.view(planes, -1), magnitude.view(planes, -1))
        return F.normalize(histograms.view(planes, self.bins, cells), dim=1, eps=NORM_EPS)

    def extra_repr(self) -> str:
        return (
            f"cell_size={self.cell_size}, bins={self.bins}, gaussian_window={self.gaussian_window}, "
            f"temporal_stride={self.temporal_stride}, token_size={self.token_size}"
        )


def _check_video(video: torch.Tensor, temporal_stride: int, token_size: int, gaussian_window: int) -> None:
    if video.dim() != 5:
        raise ValueError(f"HOG target expects video B×C×T×H×W, got shape {tuple(video.shape)}")
    frames, height, width = video.shape[2:]
    if frames != 1 and frames % temporal_stride:
        raise ValueError(
            f"HOG target: T={frames} frames must be 1 or a multiple of temporal_stride="
            f"{temporal_stride} (one target frame per temporal token)"
        )
    _check_frame_size(height, width, token_size, gaussian_window)


def _check_frame_size(height: int, width: int, multiple: int, gaussian_window: int) -> None:
    for size in (multiple, gaussian_window or 1):
        if height % size or width % size:
            raise ValueError(f"HOG target: frame size {height}×{width} must be a multiple of {size} pixels")


def _padded_frames(video: torch.Tensor, temporal_stride: int) -> torch.Tensor:
    """Frames 0, s, 2s, … of B×C×T×H×W as float32 planes (B·T'·C)×(H+2)×(W+2), reflect-padded by 1.

    One copy does the frame selection, the (B, T', C) ordering, the cast to float32 and the padding.
    """
    batch, channels, _, height, width = video.shape
    frames = video[:, :, ::temporal_stride].transpose(1, 2)
    padded = torch.empty(
        batch, frames.shape[1], channels, height + 2, width + 2, dtype=torch.float32, device=video.device
    )
    padded[..., 1:-1, 1:-1] = frames
    padded = padded.view(-1, height + 2, width + 2)
    padded[:, 0, 1:-1] = padded[:, 2, 1:-1]  # reflect: row -1 mirrors row 1
    padded[:, -1, 1:-1] = padded[:, -3, 1:-1]
    padded[:, :, 0] = padded[:, :, 2]  # columns last, so corners mirror both ways
    padded[:, :, -1] = padded[:, :, -3]
    return padded


def _sobel(padded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-correlation with wx = [[1,0,-1],[2,0,-2],[1,0,-1]] and wy = wxᵀ as shifted differences."""
    across = padded[:, :, :-2] - padded[:, :, 2:]  # left minus right, rows -1..H
    gx = across[:, 1:-1].mul(2).add_(across[:, :-2]).add_(across[:, 2:])
    del across
    down = padded[:, :-2] - padded[:, 2:]  # above minus below, columns -1..W
    gy = down[:, :, 1:-1].mul(2).add_(down[:, :, :-2]).add_(down[:, :, 2:])
    return gx, gy


@torch.no_grad()
def hog_reference(
    video: torch.Tensor,
    cell_size: int = 8,
    bins: int = 9,
    gaussian_window: int = 0,
    temporal_stride: int = 2,
    token_size: int = 16,
) -> torch.Tensor:
    """The same target computed the straightforward way: convolution, a full-resolution one-hot
    histogram times magnitude, sum over cells. Memory-hungry; for tests and benchmarks.

    Computes in float32, or in float64 for float64 input: then the gradients of float32 pixel values
    are exact, which makes it the judge of rounding (see tests/test_hog.py).
    """
    _check_video(video, temporal_stride, token_size, gaussian_window)
    batch, channels = video.shape[:2]
    dtype = torch.float64 if video.dtype == torch.float64 else torch.float32
    frames = einops.rearrange(video[:, :, ::temporal_stride].to(dtype), "b c t h w -> (b t) c h w")
    padded = F.pad(frames, (1, 1, 1, 1), mode="reflect")
    weight_x = torch.tensor(SOBEL_X, dtype=dtype, device=video.device).expand(channels, 1, 3, 3)
    gx = F.conv2d(padded, weight_x, groups=channels)
    gy = F.conv2d(padded, weight_x.transpose(2, 3), groups=channels)
    magnitude = torch.stack([gx, gy], dim=-1).norm(dim=-1)
    if gaussian_window:
        height, width = frames.shape[2:]
        reps = (height // gaussian_window, width // gaussian_window)
        magnitude = magnitude * gaussian_window_weights(gaussian_window).to(video.device, dtype).tile(reps)
    phase = torch.atan2(gx, gy) / math.pi * bins
    bin_index = phase.floor().long() % bins
    per_bin = F.one_hot(bin_index, bins).to(dtype) * magnitude.unsqueeze(-1)  # (b t) c h w bins
    cells = einops.reduce(per_bin, "n c (hc y) (wc x) k -> n c k hc wc", "sum", y=cell_size, x=cell_size)
    cells = F.normalize(cells, dim=2, eps=NORM_EPS)
    group = token_size // cell_size
    tokens = einops.rearrange(cells, "n c k (ht dy) (wt dx) -> n ht wt (c k dy dx)", dy=group, dx=group)
    return tokens.reshape(batch, -1, *tokens.shape[1:])
