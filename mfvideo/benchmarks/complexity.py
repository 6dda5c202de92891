"""Parameter and MAC counts of the models, measured on the meta device (no memory, no arithmetic).

MACs = FLOPs / 2 as counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention) for
one clip through patch embedding, blocks and head; the HOG target is not part of the network and not counted.
Attention is counted as written out (q·kᵀ and the weights times v at the head width): the default folded kernel
multiplies wider, zero-padded q, k and v to reach the fused kernels, which is implementation, not model.
`MEASURED` holds the figures for the shipped sizes; tests re-measure them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mfvideo.config.schema import ModelConfig
from mfvideo.tasks import build_model


@dataclass(frozen=True)
class ModelMeta:
    model: ModelConfig
    num_params: int
    gmacs: float  # one clip of num_frames × 224²
    reference: str  # the published figure this corresponds to
    num_frames: int = 16


def _cfg(arch: str, task: str, dim_mul_in_att: bool = False, pooling: str = "mean") -> ModelConfig:
    return ModelConfig(arch=arch, task=task, num_classes=400, dim_mul_in_att=dim_mul_in_att, pooling=pooling)


# Measured with `measure(meta.model)`; the published counts of the MaskFeat paper (36M / 71 G and 218M / 377 G)
# are those of its fine-tuning models (MaskFeat layout, last-stage Q stride kept). The pretraining graph keeps the
# 14×14 resolution in the last stage and therefore costs more.
MEASURED: Dict[str, ModelMeta] = {
    "mvit_s_supervised_classify": ModelMeta(
        _cfg("mvit_s", "classify", True, "cls"),
        34_537_744,
        64.2238,
        "torchvision mvit_v2_s: 34,537,744 params, 64.224 GFLOPS (MACs)",
    ),
    "mvit_s_maskfeat_classify": ModelMeta(
        _cfg("mvit_s", "classify"), 36_475_120, 71.1621, "MaskFeat MViT-S 16×4: 36M params, 71 GFLOPs (MACs)"
    ),
    "mvit_s_maskfeat_pretrain": ModelMeta(
        _cfg("mvit_s", "pretrain"), 36_253_356, 86.6035, "pretraining graph, 8×14×14 output (no published figure)"
    ),
    "mvit_l_maskfeat_classify": ModelMeta(
        _cfg("mvit_l", "classify"), 217_578_064, 376.8223, "MaskFeat MViT-L 16×4: 218M params, 377 GFLOPs (MACs)"
    ),
    "mvit_l_maskfeat_pretrain": ModelMeta(
        _cfg("mvit_l", "pretrain"), 217_247_580, 450.6279, "pretraining graph, 8×14×14 output (no published figure)"
    ),
    "mvit_b_supervised_classify": ModelMeta(
        _cfg("mvit_b", "classify", True, "cls"),
        51_230_128,
        224.4728,
        "MViTv2-B 32×3: 51.2M params, 225 GFLOPs (MACs)",
        num_frames=32,
    ),
}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, num_frames: int = 16, crop_size: int = 224) -> int:
    """MACs of one clip through `model.backbone` and `model.predict` (works for meta-device models)."""
    device = next(model.parameters()).device
    video = torch.zeros(1, 3, num_frames, crop_size, crop_size, device=device)
    kernels = [block.attn.kernel for block in model.backbone.blocks]
    model.backbone.set_attention_kernel("explicit")
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            x, _ = model.backbone(video)
            model.predict(x)
    finally:
        for block, kernel in zip(model.backbone.blocks, kernels):
            block.attn.set_kernel(kernel)
    return counter.get_total_flops() // 2


def build_on_meta(model_cfg: ModelConfig, num_frames: int = 16, crop_size: int = 224) -> nn.Module:
    with torch.device("meta"):
        return build_model(model_cfg, num_frames, crop_size)


def measure(model_cfg: ModelConfig, num_frames: int = 16, crop_size: int = 224) -> tuple[int, float]:
    """(parameters, GMACs) of the model `model_cfg` describes, at num_frames × crop_size²."""
    model = build_on_meta(model_cfg, num_frames, crop_size)
    return count_parameters(model), count_macs(model, num_frames, crop_size) / 1e9
