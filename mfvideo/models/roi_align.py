"""RoIAlign (He et al. 2017) with the semantics of `torchvision.ops.roi_align`, which is used where torchvision
imports; `roi_align_torch` is the same operation in plain torch for everywhere else.

Rules (torchvision's CPU and CUDA kernels): a box [x1, y1, x2, y2] is scaled by `spatial_scale` and, when `aligned`,
shifted by −0.5 so that pixel centres sit at integer coordinates; without `aligned` a box is at least 1×1. It is cut
into output_size bins, each averaging a grid of bilinear samples at the centres of equal sub-cells:
`sampling_ratio` samples per bin along each axis, or, when ≤ 0, ceil(box side / bins) of them, counted per box and
axis. A sample lying beyond −1 or beyond the map's size (y < −1 or y > H) contributes zero; one in [−1, 0] reads
the first row (column), one past H − 1 the last. A box whose adaptive grid is empty (zero or negative side, only
possible when `aligned`) gives zeros.

The plain-torch version uses that bilinear sampling is separable: a bin's average is Σ_ab Ay[a]·f[a, b]·Ax[b] with
Ay (Ax) the summed row (column) weights of its samples, so all boxes are two batched matrix products with the
feature maps (no per-box loop, exact up to float rounding, differentiable with respect to the features).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch

Size = Union[int, Sequence[int]]

try:  # torchvision's kernels where its ops load (a matching torch build); the plain-torch version otherwise
    from torchvision.ops import roi_align as torchvision_roi_align
except (ImportError, OSError, RuntimeError):
    torchvision_roi_align = None


def as_rois(boxes: torch.Tensor, box_index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """K×5 rows [batch index, x1, y1, x2, y2] from K×5 rois, or from K×4 boxes and their int K batch indices."""
    if box_index is None:
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"rois must be K×5 [batch index, x1, y1, x2, y2] (or K×4 boxes with a box_index), "
                f"got shape {tuple(boxes.shape)}"
            )
        return boxes
    if boxes.dim() != 2 or boxes.shape[1] != 4 or box_index.shape != (boxes.shape[0],):
        raise ValueError(
            f"boxes must be K×4 [x1, y1, x2, y2] with a box_index of K batch indices, got boxes "
            f"{tuple(boxes.shape)} and box_index {tuple(box_index.shape)}"
        )
    return torch.cat((box_index.to(boxes.dtype)[:, None], boxes), dim=1)


def pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def axis_weights(
    start: torch.Tensor, bin_size: torch.Tensor, samples: torch.Tensor, max_samples: int, bins: int, length: int
) -> torch.Tensor:
    """K×bins×length: for each box and bin along one axis, the bilinear weight of every feature row (column),
    summed over the bin's samples and divided by their count. `samples` (K, int) is each box's count along the
    axis; sample positions past it are masked out, so boxes with different counts share one max_samples grid."""
    dtype = start.dtype
    sample = torch.arange(max_samples, device=start.device, dtype=dtype)
    bin_id = torch.arange(bins, device=start.device, dtype=dtype)
    count = samples.clamp(min=1).to(dtype)[:, None, None]
    # the kernels' order of operations, so that positions (and the boundary tests on them) round the same way
    pos = (
        start[:, None, None]
        + bin_id[None, :, None] * bin_size[:, None, None]
        + (sample[None, None, :] + 0.5) * bin_size[:, None, None] / count
    )
    used = (sample[None, None, :] < samples[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = torch.where(used, pos, torch.zeros((), dtype=dtype, device=pos.device)).clamp(min=0.0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = torch.where(at_end, length - 1, low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros((), dtype=dtype, device=pos.device), pos - low.to(dtype))
    scale = used.to(dtype) / count
    weights = torch.zeros(start.shape[0], bins, length, dtype=dtype, device=start.device)
    weights.scatter_add_(2, low, (1.0 - frac) * scale)
    weights.scatter_add_(2, high, frac * scale)
    return weights


def clip_slots(clip: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each box's place (0, 1, …, in box order) among the boxes of its clip; `counts` are the boxes per clip."""
    order = torch.argsort(clip, stable=True)
    slot = torch.empty_like(clip)
    slot[order] = torch.arange(clip.shape[0], device=clip.device) - (counts.cumsum(0) - counts)[clip[order]]
    return slot


def roi_align_torch(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: Size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> torch.Tensor:
    """K×C×out_h×out_w RoIAlign of `input` (N×C×H×W) over `rois` (K×5 [batch index, x1, y1, x2, y2], in the
    input's dtype), in plain torch with torchvision's semantics (module docstring)."""
    if input.dim() != 4:
        raise ValueError(f"RoIAlign input must be N×C×H×W, got shape {tuple(input.shape)}")
    out_h, out_w = pair(output_size)
    num_clips, channels, height, width = input.shape
    rois = rois.detach()  # gradients flow to the features only, as with torchvision
    scaled = rois[:, 1:] * spatial_scale - (0.5 if aligned else 0.0)
    roi_w, roi_h = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    if not aligned:  # malformed boxes count as 1×1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / out_h, roi_w / out_w
    if sampling_ratio > 0:
        samples_h = samples_w = torch.full((rois.shape[0],), sampling_ratio, dtype=torch.long, device=rois.device)
    else:
        samples_h, samples_w = torch.ceil(roi_h / out_h).long(), torch.ceil(roi_w / out_w).long()
    clip = rois[:, 0].long()
    counts = torch.bincount(clip, minlength=num_clips)
    # one device→host transfer for the three sizes below
    max_h, max_w, slots = (
        torch.stack((samples_h.amax(), samples_w.amax(), counts.amax())).tolist() if rois.shape[0] else (1, 1, 0)
    )
    weights_h = axis_weights(scaled[:, 1], bin_h, samples_h, max(max_h, 1), out_h, height).to(input.dtype)
    weights_w = axis_weights(scaled[:, 0], bin_w, samples_w, max(max_w, 1), out_w, width).to(input.dtype)
    # Boxes go into per-clip slots (zero weights where a clip has fewer boxes), so that each clip's map is read by
    # one matrix product for all its boxes instead of being copied once per box.
    slot = clip_slots(clip, counts)
    rows = weights_h.new_zeros(num_clips, slots, out_h, height)
    rows[clip, slot] = weights_h
    columns = weights_w.new_zeros(num_clips * slots, width, out_w)
    columns.view(num_clips, slots, width, out_w)[clip, slot] = weights_w.transpose(1, 2)
    by_rows = torch.bmm(
        rows.reshape(num_clips, slots * out_h, height),
        input.transpose(1, 2).reshape(num_clips, height, channels * width),
    )
    pooled = torch.bmm(by_rows.reshape(num_clips * slots, out_h * channels, width), columns)
    return pooled.reshape(num_clips, slots, out_h, channels, out_w)[clip, slot].transpose(1, 2).contiguous()


BACKEND: Callable[..., torch.Tensor] = torchvision_roi_align or roi_align_torch


def roi_align(
    input: torch.Tensor,
    boxes: torch.Tensor,
    output_size: Size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    box_index: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """`torchvision.ops.roi_align` (same arguments and defaults), by torchvision where it imports and by
    `roi_align_torch` otherwise (`BACKEND` is the one chosen). `boxes` is K×5 [batch index, x1, y1, x2, y2], or K×4
    [x1, y1, x2, y2] with `box_index` (int K, the row of `input` each box belongs to); boxes are taken in the input's
    dtype, as torchvision requires. Returns K×C×out_h×out_w."""
    rois = as_rois(boxes, box_index).to(input.dtype)
    return BACKEND(input, rois, pair(output_size), spatial_scale, sampling_ratio, aligned)
