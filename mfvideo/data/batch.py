"""Batch-level fine-tuning augmentations, run where the batch is consumed (on the GPU when there is one).

Input: the normalised float32 video batch `B×C×T×H×W` (after `Normalise`) and int64 labels `B`, on any device.
Every random choice is drawn on the host from the caller's `numpy.random.Generator` (boxes, λ, which clips), and
noise comes from a `torch.Generator` on the batch's device seeded from it: deterministic for a seed, and nothing
is read back from the device. Both augmentations work in place on the batch they are given and return it.

Compared against PySlowFast `slowfast/datasets/mixup.py` and `random_erasing.py` (ports of timm's
`timm/data/mixup.py`, batch mode, and `timm/data/random_erasing.py`) with the values of the MaskFeat fine-tuning
config `configs/masked_ssl/k400_MVITv2_S_16x4_FT.yaml` as defaults. PySlowFast erases each clip in its dataset
(after normalisation, cube mode) and mixes in the training loop, so a batch goes through `RandomErasing` first and
`MixupCutmix` second.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


class MixupCutmix:
    """Mixup or CutMix of each clip with its partner in the batch reversed (clip i with clip B−1−i), one λ for
    the whole batch, with label smoothing (timm's batch mode).

    With probability `prob` the batch is mixed: CutMix with probability `switch_prob` when both are enabled
    (alpha > 0), else mixup; λ ~ Beta(alpha, alpha). Mixup: `λ·x + (1−λ)·partner`. CutMix: a box (side
    `√(1−λ)` of the frame's, centre uniform, clipped to the frame) on every frame of every clip shows the
    partner, and λ becomes the share of the frame left outside the box. Targets: smoothed one-hot
    (`label_smoothing / num_classes` off, `1 − label_smoothing + label_smoothing / num_classes` on) mixed with
    the partner's by λ, float32 `B×num_classes`, each row summing to 1. With both alphas 0 only the labels are
    smoothed."""

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        prob: float = 1.0,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha and cutmix_alpha must be ≥ 0, got {mixup_alpha} and {cutmix_alpha}")
        _check_probability("switch_prob", switch_prob)
        _check_probability("label_smoothing", label_smoothing)
        _check_probability("prob", prob)
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.prob = prob

    def _draw_mix(self, rng: np.random.Generator) -> tuple[float, bool]:
        """(λ, whether CutMix); λ = 1 when the batch is not mixed."""
        if (self.mixup_alpha == 0 and self.cutmix_alpha == 0) or rng.random() >= self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.random() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """timm's `rand_bbox`: sides int(side·√(1−λ)), centre uniform over the frame, clipped to it;
        (top, bottom, left, right), bottom and right exclusive."""
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = np.clip((centre_y - cut_h // 2, centre_y + cut_h // 2), 0, height)
        left, right = np.clip((centre_x - cut_w // 2, centre_x + cut_w // 2), 0, width)
        return int(top), int(bottom), int(left), int(right)

    def smoothed_one_hot(self, labels: torch.Tensor) -> torch.Tensor:
        off = self.label_smoothing / self.num_classes
        on = 1.0 - self.label_smoothing + off
        targets = torch.full((labels.shape[0], self.num_classes), off, dtype=torch.float32, device=labels.device)
        return targets.scatter_(1, labels.view(-1, 1), on)

    def __call__(
        self, video: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if video.shape[0] != labels.shape[0]:
            raise ValueError(f"video batch of {video.shape[0]} clips with {labels.shape[0]} labels")
        lam, use_cutmix = self._draw_mix(rng)
        if lam < 1.0:
            if use_cutmix:
                height, width = video.shape[-2:]
                top, bottom, left, right = self.cutmix_box(height, width, lam, rng)
                region = video[..., top:bottom, left:right]
                region.copy_(region.flip(0))  # flip copies, so the partner's pixels are read before any write
                lam = 1.0 - (bottom - top) * (right - left) / (height * width)
            else:
                partner = video.flip(0)
                video.mul_(lam).add_(partner, alpha=1.0 - lam)
        targets = self.smoothed_one_hot(labels)
        partner_targets = targets.flip(0)
        return video, targets.mul_(lam).add_(partner_targets, alpha=1.0 - lam)


class RandomErasing:
    """With probability `probability`, one box of each clip replaced by per-pixel N(0, 1) noise on every frame
    (the same box on every frame, fresh noise in each): PySlowFast's cube mode with `RE_MODE: pixel`,
    `RE_COUNT: 1`.

    The box: area a uniform fraction `area_range` of the frame, aspect (height / width) log-uniform in
    `aspect_range` (default [0.3, 1/0.3]), height round(√(area·aspect)), width round(√(area/aspect)); it must be
    strictly smaller than the frame in both sides, and after `attempts` boxes that do not fit, the clip is left
    as it is. Position uniform where it fits."""

    def __init__(
        self,
        probability: float = 0.25,
        area_range: Sequence[float] = (0.02, 1 / 3),
        aspect_range: Sequence[float] = (0.3, 1 / 0.3),
        attempts: int = 100,
    ):
        _check_probability("probability", probability)
        if not 0 < area_range[0] <= area_range[1]:
            raise ValueError(f"area_range must be 0 < low ≤ high, got {tuple(area_range)}")
        if not 0 < aspect_range[0] <= aspect_range[1]:
            raise ValueError(f"aspect_range must be 0 < low ≤ high, got {tuple(aspect_range)}")
        self.probability = probability
        self.area_range = tuple(area_range)
        self.log_aspect_range = (math.log(aspect_range[0]), math.log(aspect_range[1]))
        self.attempts = attempts

    def erase_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int] | None:
        """(top, left, box height, box width) for one clip, or None when it is not erased."""
        if rng.random() >= self.probability:
            return None
        for _ in range(self.attempts):
            area = rng.uniform(*self.area_range) * height * width
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            box_h = int(round(math.sqrt(area * aspect)))
            box_w = int(round(math.sqrt(area / aspect)))
            if box_h < height and box_w < width:
                return int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1)), box_h, box_w
        return None

    def __call__(self, video: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """float B×C×T×H×W, erased in place and returned."""
        height, width = video.shape[-2:]
        noise = torch.Generator(device=video.device)
        noise.manual_seed(int(rng.integers(0, 2**63)))
        for clip in video:
            box = self.erase_box(height, width, rng)
            if box is None:
                continue
            top, left, box_h, box_w = box
            region = clip[..., top : top + box_h, left : left + box_w]
            region.copy_(torch.randn(region.shape, generator=noise, dtype=video.dtype, device=video.device))
        return video
