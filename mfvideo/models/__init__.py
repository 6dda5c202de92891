"""models stage of the mfvideo flow: MViTv2 backbones, the MaskFeat pretraining model, the video classifier."""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from mfvideo.config.schema import ModelConfig
from mfvideo.models.checkpoint import load_pretrained
from mfvideo.models.classifier import MViTClassifier
from mfvideo.models.maskfeat import MaskFeat
from mfvideo.models.mvit import ARCHS, MViTConfig

TASKS = ("pretrain", "classify")


def backbone_config(model_cfg: ModelConfig) -> MViTConfig:
    if model_cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={model_cfg.arch!r}: expected one of {sorted(ARCHS)}")
    return replace(ARCHS[model_cfg.arch](), drop_path=model_cfg.drop_path, dim_mul_in_att=model_cfg.dim_mul_in_att,
                   activation_checkpointing=model_cfg.activation_checkpointing)


def build_model(model_cfg: ModelConfig, num_frames: int, crop_size: int) -> nn.Module:
    """The model for `model_cfg.task` at clips of num_frames × crop_size², weights from `model_cfg.init` if set.

    pretrain: MaskFeat, forward({"video", "pixels", "mask"}) -> {"loss", "pred", "target", "mask"}; classify:
    forward(video) -> logits.
    Both have layer_id(name) and num_layers for layer-wise learning-rate decay."""
    if model_cfg.task not in TASKS:
        raise ValueError(f"model.task={model_cfg.task!r}: build_model builds {TASKS} "
                         "(detection is not available yet)")
    cfg = backbone_config(model_cfg)
    input_size = (num_frames, crop_size, crop_size)
    if model_cfg.task == "pretrain":
        hog = model_cfg.hog
        model: nn.Module = MaskFeat(replace(cfg, keep_last_q_stride=False), input_size, cell_size=hog.cell_size,
                                    bins=hog.bins, gaussian_window=hog.gaussian_window)
    else:
        model = MViTClassifier(cfg, input_size, model_cfg.num_classes, model_cfg.dropout, model_cfg.pooling)
    if model_cfg.init:
        load_pretrained(model, model_cfg.init)
    return model


__all__ = ["build_model", "backbone_config", "load_pretrained", "MaskFeat", "MViTClassifier", "MViTConfig"]
