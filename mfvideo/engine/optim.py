"""Parameter groups (no weight decay on biases and 1-D parameters; layer-wise LR decay) and the LR schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mfvideo.config.schema import OptimConfig


def param_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict]:
    """Groups keyed by (layer, decayed?); each carries `lr_scale` = layer_decay^(top − layer_id).

    Layer ids come from the model (`layer_id(name)`, `num_layers` ids in all): patch embedding, cls and mask
    tokens are layer 0, block i is layer i+1, head and final norm are the top id, depth + 1 = num_layers − 1.
    With layer_decay 1 every scale is 1.
    """
    groups: dict[tuple[int, bool], dict] = {}
    top = model.num_layers - 1
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = param.ndim > 1 and not name.endswith(".bias")
        layer = model.layer_id(name) if optim.layer_decay != 1.0 else top
        group = groups.setdefault(
            (layer, decayed),
            {
                "params": [],
                "weight_decay": optim.weight_decay if decayed else 0.0,
                "lr_scale": optim.layer_decay ** (top - layer),
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


@dataclass(frozen=True)
class CosineSchedule:
    """Per-step LR: linear warmup from `start_lr` to `peak_lr`, then half-cosine down to `end_lr`."""

    peak_lr: float
    start_lr: float
    end_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start_lr + (self.peak_lr - self.start_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.end_lr + (self.peak_lr - self.end_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def schedule_for(optim: OptimConfig, steps_per_epoch: int, total_steps: int) -> CosineSchedule:
    return CosineSchedule(
        peak_lr=optim.lr,
        start_lr=optim.warmup_start_lr,
        end_lr=optim.min_lr,
        warmup_steps=round(optim.warmup_epochs * steps_per_epoch),
        total_steps=total_steps,
    )


def apply_lr(optimizer: torch.optim.Optimizer, scales: list[float], lr: float) -> None:
    for group, scale in zip(optimizer.param_groups, scales):
        group["lr"] = lr * scale
