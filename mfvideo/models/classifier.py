"""Video classification with an MViTv2 backbone: pooled tokens → LayerNorm → dropout → Linear, and its loss."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mfvideo.data import fields
from mfvideo.data.fields import check_batch
from mfvideo.models.mvit import LAYER_NORM_EPS, BackboneLayerIds, MViT, MViTConfig, init_head

POOLINGS = ("mean", "cls")


class ClassificationHead(nn.Module):
    """pooling="mean": mean of the non-cls tokens (MaskFeat fine-tuning); "cls": the cls token (supervised MViTv2,
    torchvision's mvit_v2_s). Head weights and bias are scaled by 0.001 at init."""

    def __init__(self, dim: int, num_classes: int, dropout: float, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")
        self.pooling = pooling
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(dim, num_classes)
        init_head(self.norm, self.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x[:, 1:].mean(dim=1) if self.pooling == "mean" else x[:, 0]
        return self.proj(self.dropout(self.norm(pooled)))


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of −Σ_k t_k · log softmax(logits)_k: the loss of mixed, smoothed targets (rows sum to 1)."""
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


class MViTClassifier(BackboneLayerIds, nn.Module):
    """forward(batch) -> {"logits": B×num_classes, "loss"}: reads batch["video"] (B×3×T×H×W, normalised) and, for the
    loss, batch["target"] (B×num_classes soft targets from mixup/CutMix and label smoothing) or else batch["label"]
    (int64 B, plain cross-entropy). Without either there is no "loss" (inference)."""

    fresh_prefixes = ("head.",)  # what a pretraining checkpoint cannot provide: the classification head

    def __init__(
        self, cfg: MViTConfig, input_size: Sequence[int], num_classes: int, dropout: float = 0.5, pooling: str = "mean"
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = MViT(cfg, input_size)
        self.head = ClassificationHead(self.backbone.dim_out, num_classes, dropout, pooling)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """B×D clip features for probes (mfvideo.evaluation.probe): the mean of the backbone's non-cls output
        tokens, before the head's norm, whatever `pooling` the head uses (so that probes compare like with like)."""
        x, _ = self.backbone(video)
        return x[:, 1:].mean(dim=1)

    def forward(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        targets = [key for key in (fields.TARGET, fields.LABEL) if key.name in batch][:1]  # target first
        check_batch(batch, (fields.VIDEO, *targets), "MViTClassifier", {"K": self.num_classes})
        x, _ = self.backbone(batch[fields.VIDEO.name])
        logits = self.predict(x)
        if targets == [fields.TARGET]:
            return {"logits": logits, "loss": soft_target_cross_entropy(logits, batch[fields.TARGET.name])}
        if targets == [fields.LABEL]:
            return {"logits": logits, "loss": F.cross_entropy(logits.float(), batch[fields.LABEL.name])}
        return {"logits": logits}
