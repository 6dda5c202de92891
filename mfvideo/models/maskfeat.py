"""MaskFeat pretraining model: mask token after the patch embedding, MViTv2 over all tokens, HOG regression.

The mask comes from the loader on the coarse mask-unit grid (8×7×7 for 16×224², 1×14×14 for images) and is
upsampled (nearest) to the patch-embedding grid for the mask token and to the output grid for the loss.

The backbone sees the normalised clip (`video`); the HOG target is computed from the same clip's uint8 pixel values
(`pixels`, already on the device beside `video`). Mean and std drop out of the target in exact arithmetic
(docs/design.md §2), and on integer pixel values the Sobel gradients are exact in float32, so the target is the
formula's own answer; on the normalised floats, gradients that should cancel to 0 leave ±1e-8 and flip pixels
between bins 0 and 8.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mfvideo.data import fields
from mfvideo.data.fields import check_batch
from mfvideo.models.mvit import INIT_STD, LAYER_NORM_EPS, BackboneLayerIds, Grid, MViT, MViTConfig
from mfvideo.targets.hog import HogTarget


def upsample_mask(mask: torch.Tensor, grid: Grid, device: torch.device) -> torch.Tensor:
    """B×t×h×w bool mask → B×(T·H·W) float on `device`, each unit repeated over the (T/t, H/h, W/w) tokens it
    covers."""
    if mask.dim() != 4:
        raise ValueError(f"mask must be B×T'×H'×W' (bool), got shape {tuple(mask.shape)}")
    if any(n % m for n, m in zip(grid, mask.shape[1:])):
        raise ValueError(
            f"mask grid {tuple(mask.shape[1:])} does not divide the token grid {tuple(grid)}; "
            "use mfvideo.targets.masks.mask_grid(num_frames, crop_size) for the clip size"
        )
    return F.interpolate(mask.to(device)[:, None].float(), size=tuple(grid), mode="nearest").flatten(1)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the features of masked tokens (B×N×D, B×N×D, B×N); 0 when nothing is masked.

    Weighting instead of boolean indexing keeps shapes static and avoids a device→host sync per step."""
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    return (per_token * weight).sum() / weight.sum().clamp(min=1.0)


def masked_sums(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Additive statistics of the masked tokens (B×N×D, B×N×D, B×N) for `MaskFeat.log_values`: the squared error,
    the token count, the per-feature target sum and the target's sum of squares, all without gradient."""
    pred, target = pred.detach().float(), target.float()
    return {
        "squared_error": ((pred - target).pow(2).sum(dim=-1) * weight).sum(),
        "masked_tokens": weight.sum(),
        "target_sum": (target * weight.unsqueeze(-1)).sum(dim=(0, 1)),
        "target_squares": (target.pow(2).sum(dim=-1) * weight).sum(),
    }


def explained_variance(window: Mapping[str, torch.Tensor], running: Mapping[str, torch.Tensor]) -> Optional[float]:
    """1 − (squared error) / (squared error of predicting each target feature's mean), over the masked tokens of
    `window` (sums from `masked_sums`, added up over steps and ranks). The mean is the running estimate over
    `running` (every earlier window) and `window` together. 0 for a model that predicts the average histogram
    everywhere, 1 for a perfect one; None when nothing was masked or the targets did not vary."""
    tokens = float(window["masked_tokens"])
    if tokens == 0:
        return None
    all_tokens = tokens + float(running.get("masked_tokens", 0.0))
    mean = (window["target_sum"] + running.get("target_sum", 0.0)) / all_tokens
    # Σ_tokens |t − mean|² expanded over the sums, so the window's targets need not be kept.
    baseline = float(window["target_squares"] - 2 * mean @ window["target_sum"] + tokens * mean @ mean)
    return None if baseline <= 0 else 1.0 - float(window["squared_error"]) / baseline


class PredictionHead(nn.Module):
    """LayerNorm (eps 1e-6) + Linear(dim → target features), zero biases (as PySlowFast's MSSeparateHead)."""

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.proj = nn.Linear(dim, out_features)
        nn.init.trunc_normal_(self.proj.weight, std=INIT_STD)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


# What forward reads (shapes and dtypes: mfvideo.data.fields); pixels and video share B, C, T, H and W.
READS = (fields.VIDEO, fields.PIXELS, fields.MASK)


class MaskFeat(BackboneLayerIds, nn.Module):
    """forward(batch) -> {"loss", "sums", "pred", "target", "mask"}, batch holding `video` (float B×3×T×H×W,
    normalised: the backbone's input), `pixels` (the same clip as uint8 B×3×T×H×W on the same device: the HOG
    target's input) and `mask` (B×T'×H'×W' bool, mask units). `sums` are additive statistics of the masked tokens for
    the training log (`log_values`).

    pred and target are B×T×H×W×D on the output grid (D = 108 for the default HOG), mask is that grid's bool mask.
    """

    embedding_params = ("mask_token",)
    fresh_prefixes = ("mask_token", "pred_head.")  # continuing from a classifier or a bare backbone

    def __init__(
        self, cfg: MViTConfig, input_size: Sequence[int], cell_size: int = 8, bins: int = 9, gaussian_window: int = 0
    ) -> None:
        super().__init__()
        if cfg.keep_last_q_stride:
            raise ValueError(f"{cfg.name}: MaskFeat pretraining needs keep_last_q_stride=False (1/16 output grid)")
        token_size = cfg.output_stride[1]
        if cfg.output_stride[2] != token_size or token_size % cell_size:
            raise ValueError(
                f"{cfg.name}: output stride {cfg.output_stride} needs square tokens made of "
                f"whole {cell_size}-pixel HOG cells"
            )
        self.backbone = MViT(cfg, input_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=INIT_STD)
        self.hog = HogTarget(
            cell_size=cell_size,
            bins=bins,
            gaussian_window=gaussian_window,
            temporal_stride=cfg.patch_stride[0],
            token_size=token_size,
        )
        self.target_dim = 3 * bins * (token_size // cell_size) ** 2
        self.pred_head = PredictionHead(self.backbone.dim_out, self.target_dim)

    @staticmethod
    def log_values(window: Mapping[str, torch.Tensor], running: Mapping[str, torch.Tensor]) -> dict:
        """What the training log shows beside the loss (`mfvideo.engine.window_sums`): the share of the masked
        targets' variance that the predictions explain, which reads ≈ 0 at once for a model stuck on the mean."""
        value = explained_variance(window, running)
        return {} if value is None else {"explained_variance": value}

    def insert_mask_token(self, tokens: torch.Tensor, mask: torch.Tensor, grid: Grid) -> torch.Tensor:
        m = upsample_mask(mask, grid, tokens.device).unsqueeze(-1).to(tokens.dtype)
        return tokens * (1 - m) + self.mask_token.to(tokens.dtype) * m

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """HOG features predicted for every non-cls token (only the masked ones enter the loss)."""
        return self.pred_head(x[:, 1:])

    @torch.no_grad()
    def target(self, pixels: torch.Tensor, grid: Grid) -> torch.Tensor:
        """HOG features per output token, B×N×D, of the clip's uint8 pixel values, in float32."""
        hog = self.hog(pixels)
        if tuple(hog.shape[1:4]) != tuple(grid):
            raise ValueError(
                f"HOG target grid {tuple(hog.shape[1:4])} differs from the model's output grid "
                f"{tuple(grid)} for a clip of shape {tuple(pixels.shape)}"
            )
        return hog.flatten(1, 3)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """B×D clip features for probes (mfvideo.evaluation.probe): the backbone on the whole clip (no mask token),
        the mean of its non-cls output tokens, the pooling MaskFeat fine-tuning classifies from."""
        x, _ = self.backbone(video)
        return x[:, 1:].mean(dim=1)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        check_batch(batch, READS, "MaskFeat")
        video, mask = batch[fields.VIDEO.name], batch[fields.MASK.name]
        tokens, grid = self.backbone.embed(video)
        tokens = self.insert_mask_token(tokens, mask, grid)
        x, out_grid = self.backbone.encode(tokens, grid)
        pred = self.predict(x)
        target = self.target(batch[fields.PIXELS.name], out_grid)
        out_mask = upsample_mask(mask, out_grid, pred.device)
        b = video.shape[0]
        return {
            "loss": masked_mse(pred, target, out_mask),
            "sums": masked_sums(pred, target, out_mask),
            "pred": pred.reshape(b, *out_grid, -1),
            "target": target.reshape(b, *out_grid, -1),
            "mask": out_mask.reshape(b, *out_grid).bool(),
        }
