"""Parameter groups and LR schedule used by the engine."""

import math

import pytest
import torch

from mfvideo.config.schema import OptimConfig
from mfvideo.engine.optim import CosineSchedule, apply_lr, param_groups, schedule_for


class ThreeLayer(torch.nn.Module):
    """embed (layer 0), two blocks (1, 2), head (3): the layer-id contract of mfvideo models."""

    num_layers = 4  # ids 0..3

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(4, 4)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 4))
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)])
        self.head = torch.nn.Linear(4, 2)

    def layer_id(self, name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 3 if name.startswith("head") else 0


def by_name(model, groups):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return {lookup[id(p)]: g for g in groups for p in g["params"]}


def test_no_weight_decay_on_biases_and_1d_parameters():
    model = ThreeLayer()
    groups = by_name(model, param_groups(model, OptimConfig(weight_decay=0.05)))
    assert groups["embed.weight"]["weight_decay"] == 0.05
    assert groups["head.weight"]["weight_decay"] == 0.05
    assert groups["cls_token"]["weight_decay"] == 0.05  # 3-D token: decayed, as in the official recipe
    for name in ("embed.bias", "blocks.1.weight", "blocks.1.bias", "head.bias"):
        assert groups[name]["weight_decay"] == 0.0, name
    assert all(g["lr_scale"] == 1.0 for g in groups.values())


def test_layer_decay_scales_follow_depth():
    model = ThreeLayer()
    groups = by_name(model, param_groups(model, OptimConfig(layer_decay=0.75)))
    assert groups["embed.weight"]["lr_scale"] == pytest.approx(0.75**3)
    assert groups["blocks.0.weight"]["lr_scale"] == pytest.approx(0.75**2)
    assert groups["blocks.1.weight"]["lr_scale"] == pytest.approx(0.75**1)
    assert groups["head.weight"]["lr_scale"] == pytest.approx(1.0)
    assert sum(len(g["params"]) for g in param_groups(model, OptimConfig(layer_decay=0.75))) == len(
        list(model.parameters())
    )


def test_schedule_warms_up_linearly_then_follows_a_cosine():
    schedule = CosineSchedule(peak_lr=1e-3, start_lr=1e-6, end_lr=1e-5, warmup_steps=10, total_steps=110)
    assert schedule(0) == pytest.approx(1e-6)
    assert schedule(5) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert schedule(10) == pytest.approx(1e-3)
    assert schedule(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi / 2)))
    assert schedule(110) == pytest.approx(1e-5)
    assert schedule(500) == pytest.approx(1e-5)


def test_schedule_from_recipe_counts_epochs_in_steps():
    schedule = schedule_for(OptimConfig(lr=8e-4, warmup_epochs=10, epochs=300), steps_per_epoch=7, total_steps=2100)
    assert schedule.warmup_steps == 70 and schedule(70) == pytest.approx(8e-4)


def test_apply_lr_multiplies_each_group_by_its_scale():
    model = ThreeLayer()
    groups = param_groups(model, OptimConfig(layer_decay=0.5))
    scales = [g.pop("lr_scale") for g in groups]
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    apply_lr(optimizer, scales, 2e-3)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([2e-3 * s for s in scales])


def test_layer_decay_on_a_real_mvit_follows_the_recipe_formula():
    """decay^(depth + 1 − layer): patch embedding and cls token at layer 0, block i at i + 1, head at depth + 1."""
    from mfvideo.config.schema import ModelConfig
    from mfvideo.tasks import build_model

    model = build_model(ModelConfig(arch="mvit_tiny", task="classify", num_classes=5), 4, 64)
    depth = model.backbone.cfg.depth
    groups = by_name(model, param_groups(model, OptimConfig(layer_decay=0.75)))
    assert groups["backbone.patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert groups["backbone.cls_token"]["lr_scale"] == pytest.approx(0.75 ** (depth + 1))
    assert groups["backbone.blocks.0.norm1.weight"]["lr_scale"] == pytest.approx(0.75**depth)
    assert groups[f"backbone.blocks.{depth - 1}.norm1.weight"]["lr_scale"] == pytest.approx(0.75)
    assert groups["head.proj.weight"]["lr_scale"] == pytest.approx(1.0)
