"""Spatio-temporal action detection (AVA) with an MViTv2 backbone: one multi-label score vector per person box.

The clip's tokens go through a final LayerNorm; the cls token is dropped, the grid tokens are laid out as
B×C×T×H×W and averaged over T; each box (pixels of the clip) is RoIAligned 7×7 (aligned, adaptive sampling as
PySlowFast's ResNetRoIHead) at the backbone's output stride, max-pooled, and a dropout + Linear gives its logits.
The loss is binary cross-entropy on sigmoid scores (AVA actions are multi-label).

The backbone keeps the 1/16 grid by default: the last-stage Q stride is removed as in MaskFeat pretraining (the
MViT's own 1/32 grid is too coarse for person boxes, as MaskFeat's AVA head has it).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mfvideo.data import fields
from mfvideo.data.fields import check_batch
from mfvideo.models.mvit import LAYER_NORM_EPS, BackboneLayerIds, Grid, MViT, MViTConfig, init_head
from mfvideo.models.roi_align import roi_align

ROI_SIZE = 7
# ≤ 0: ceil(box side / 7) samples per bin along each axis, counted per box (PySlowFast's ResNetRoIHead, through
# detectron2's ROIAlign, passes 0).
SAMPLING_RATIO = 0
# model.detection_stride (pixels per token of the grid the RoI head reads) -> whether the backbone keeps its
# last-stage Q stride (MViTv2's patch stride 4 and Q strides at three stage transitions)
DETECTION_STRIDES = {16: False, 32: True}


class DetectionHead(nn.Module):
    """Tokens (B×(1+N)×C, cls first) on `grid` → per-box logits: LayerNorm, drop cls, mean over T, RoIAlign 7×7
    (aligned) at `spatial_scale`, max over the 7×7, dropout, Linear. Initialised as the classification head (weights
    and bias of the Linear scaled by 0.001)."""

    def __init__(self, dim: int, num_classes: int, dropout: float, spatial_scale: float) -> None:
        super().__init__()
        self.spatial_scale = spatial_scale
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, num_classes)
        init_head(self.norm, self.proj)

    def feature_map(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """B×C×H×W: the normed grid tokens, averaged over time."""
        b, _, c = x.shape
        tokens = self.norm(x)[:, 1:].reshape(b, *grid, c)
        return tokens.mean(dim=1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, grid: Grid, boxes: torch.Tensor, box_index: torch.Tensor) -> torch.Tensor:
        features = self.feature_map(x, grid)
        # float32 whatever the weights or autocast use: box coordinates and bilinear weights need its precision
        with torch.autocast(features.device.type, enabled=False):
            pooled = roi_align(
                features.float(),
                boxes.float(),
                ROI_SIZE,
                self.spatial_scale,
                SAMPLING_RATIO,
                aligned=True,
                box_index=box_index,
            )
        pooled = pooled.amax(dim=(2, 3)).to(self.proj.weight.dtype)
        return self.proj(self.dropout(pooled))


# What forward reads (shapes and dtypes: mfvideo.data.fields); box_labels only for the loss.
READS = (fields.VIDEO, fields.BOXES, fields.BOX_INDEX)


def multilabel_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over the R×A entries. With R = 0 it is a zero still connected to the parameters
    (a sum over no entries), so backward and ZeRO's gradient hooks run as on any batch."""
    total = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum")
    return total / max(logits.numel(), 1)


class Detector(BackboneLayerIds, nn.Module):
    """forward(batch) -> {"scores": R×num_classes sigmoid probabilities, "logits", "loss"}: reads batch["video"]
    (B×3×T×H×W, normalised; any H and W, e.g. full test frames padded to a multiple of the output stride),
    batch["boxes"] (float R×4, x1, y1, x2, y2 in pixels of `video`), batch["box_index"] (int64 R, each box's clip)
    and, for the loss, batch["box_labels"] (R×num_classes multi-hot). Without box_labels there is no "loss".

    With batch["video_size"] (B [height, width] pairs, each clip's own size in `video`), each clip is seen at its own
    size rounded up to the output stride, not at the batch's: attention is global, so padding to a wider batch mate
    would change every token of a clip, and its scores would depend on what it was batched with (full test frames
    of movies of other aspect ratios). Clips of one size run together.

    `stride` (DETECTION_STRIDES) is the grid the RoI head reads: 16 (default) removes the last-stage Q stride from
    `cfg`, as MaskFeat pretraining; 32 keeps MViT's own. The RoI spatial scale is 1 / stride."""

    fresh_prefixes = ("roi_head.",)  # what a pretraining or classification checkpoint cannot provide

    def __init__(
        self, cfg: MViTConfig, input_size: Sequence[int], num_classes: int, dropout: float = 0.5, stride: int = 16
    ) -> None:
        super().__init__()
        if stride not in DETECTION_STRIDES:
            raise ValueError(f"stride={stride}: expected one of {sorted(DETECTION_STRIDES)}")
        cfg = replace(cfg, keep_last_q_stride=DETECTION_STRIDES[stride])
        if cfg.output_stride[1:] != (stride, stride):
            raise ValueError(
                f"{cfg.name}: its output stride is {cfg.output_stride[1:]}, not {stride} (patch stride "
                f"{cfg.patch_stride[1:]}, Q strides at blocks {cfg.q_stride_blocks})"
            )
        self.num_classes = num_classes
        self.stride = stride
        self.backbone = MViT(cfg, input_size)
        # not "head": a classifier checkpoint's head (another width of Linear) must not load into it
        self.roi_head = DetectionHead(self.backbone.dim_out, num_classes, dropout, 1.0 / stride)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """B×D clip features (feature extraction, probes): the mean of the backbone's non-cls output tokens, as the
        classifier's and MaskFeat's."""
        x, _ = self.backbone(video)
        return x[:, 1:].mean(dim=1)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        labelled = fields.BOX_LABELS.name in batch
        check_batch(batch, READS + ((fields.BOX_LABELS,) if labelled else ()), "Detector", {"A": self.num_classes})
        video, boxes = batch[fields.VIDEO.name], batch[fields.BOXES.name]
        box_index = batch[fields.BOX_INDEX.name]
        groups = self._size_groups(batch)
        if len(groups) == 1 and next(iter(groups)) == tuple(video.shape[-2:]):
            x, grid = self.backbone(video)
            logits = self.roi_head(x, grid, boxes, box_index)
        else:
            parts, order = [], []
            for (height, width), clip_list in groups.items():
                clips = torch.tensor(clip_list, device=video.device)  # ascending
                in_group = torch.isin(box_index, clips)
                x, grid = self.backbone(video[clips, :, :, :height, :width])
                # each box's clip, renumbered to its row among the group's clips
                parts.append(self.roi_head(x, grid, boxes[in_group], torch.searchsorted(clips, box_index[in_group])))
                order.append(in_group.nonzero().squeeze(1))
            logits = torch.cat(parts)[torch.argsort(torch.cat(order))]
        logits = logits.float()
        out = {"scores": torch.sigmoid(logits), "logits": logits}
        if labelled:
            out["loss"] = multilabel_bce(logits, batch[fields.BOX_LABELS.name])
        return out

    def _size_groups(self, batch: Dict[str, torch.Tensor]) -> Dict[tuple, list]:
        """(height, width) -> the clips seen at that size: each clip's `video_size` rounded up to the output stride
        (within `video`); without `video_size`, every clip at the whole video's size."""
        video = batch[fields.VIDEO.name]
        limit = tuple(video.shape[-2:])
        sizes = batch.get(fields.VIDEO_SIZE.name)
        if sizes is None:
            return {limit: list(range(video.shape[0]))}
        if len(sizes) != video.shape[0]:
            raise ValueError(
                f"detection batch: video_size has {len(sizes)} sizes for the {video.shape[0]} clips of video"
            )
        groups: Dict[tuple, list] = {}
        for clip, size in enumerate(sizes):
            seen = tuple(min(-(-int(side) // self.stride) * self.stride, most) for side, most in zip(size, limit))
            groups.setdefault(seen, []).append(clip)
        return groups
