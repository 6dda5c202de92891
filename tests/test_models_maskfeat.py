"""MaskFeat pretraining model: mask token, HOG target, masked loss, images, and fine-tuning from its checkpoint."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from mfvideo.config.schema import ModelConfig
from mfvideo.models.checkpoint import load_pretrained
from mfvideo.models.mvit import resize_rel_pos
from mfvideo.targets.hog import HogTarget, hog_reference
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks import build_model
from models_helpers import clip_batch, normalise, pixel_batch

TINY = ModelConfig(arch="mvit_tiny", task="pretrain")


def cube_masks(batch: int, num_frames: int, crop: int, seed: int = 0) -> torch.Tensor:
    generator = build_mask_generator("cube", mask_grid(num_frames, crop), min_units=1)
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([generator(rng) for _ in range(batch)]))


def pretrain_batch(pixels: torch.Tensor, mask: torch.Tensor) -> dict:
    """The batch MaskFeat takes: the normalised clip for the backbone, its uint8 pixels for the target, the mask."""
    return {"video": normalise(pixels), "pixels": pixels, "mask": mask}


def test_pretraining_outputs_on_the_output_grid():
    torch.manual_seed(0)
    model = build_model(TINY, num_frames=16, crop_size=64)
    mask = cube_masks(2, 16, 64)
    out = model(pretrain_batch(pixel_batch(2, 16, 64, 64), mask))
    assert out["pred"].shape == out["target"].shape == (2, 8, 4, 4, 108)
    assert torch.equal(out["mask"], mask.repeat_interleave(2, 2).repeat_interleave(2, 3))
    masked = out["mask"]
    expected = (out["pred"][masked] - out["target"][masked]).pow(2).mean()
    torch.testing.assert_close(out["loss"], expected)
    out["loss"].backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def test_bf16_autocast_matches_float32():
    model = build_model(TINY, 16, 64)
    batch = pretrain_batch(pixel_batch(1, 16, 64, 64), cube_masks(1, 16, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(batch)
    assert low["pred"].dtype == torch.bfloat16 and low["target"].dtype == torch.float32
    torch.testing.assert_close(low["loss"], model(batch)["loss"], rtol=2e-2, atol=1e-3)


def test_target_is_the_exact_hog_of_the_pixels_not_of_the_normalised_clip():
    """The backbone reads `video`, the target `pixels`: the target equals the formula evaluated exactly (float64 on
    the integer pixel values) to float32 rounding, while the same clip normalised to float32 gives a target that
    moves many values by far more (bins 0 and 8 swap where gradients cancel)."""
    model = build_model(TINY, 16, 64)
    pixels = pixel_batch(1, 16, 64, 64)
    batch = pretrain_batch(pixels, cube_masks(1, 16, 64))
    out = model(batch)
    exact = hog_reference(pixels.double()).float().reshape(out["target"].shape)
    torch.testing.assert_close(out["target"], exact, rtol=0, atol=1e-6)
    from_normalised = HogTarget()(batch["video"]).reshape(out["target"].shape)
    assert ((from_normalised - exact).abs() > 1e-3).float().mean() > 0.01


def test_bf16_weights_take_a_float32_clip_and_target_the_exact_hog():
    """As under DeepSpeed bf16: weights in bf16, the normalised clip in float32 into the backbone; the target still
    comes from the uint8 pixels, bit for bit the float32 model's target."""
    pixels = pixel_batch(1, 16, 64, 64)
    batch = pretrain_batch(pixels, cube_masks(1, 16, 64))
    model = build_model(TINY, 16, 64)
    full = model(batch)
    out = model.to(torch.bfloat16)(batch)
    assert out["pred"].dtype == torch.bfloat16
    torch.testing.assert_close(out["target"], full["target"], rtol=0, atol=0)


def test_batch_without_pixels_or_with_other_pixels_is_named():
    model = build_model(TINY, 16, 64)
    pixels, mask = pixel_batch(1, 16, 64, 64), cube_masks(1, 16, 64)
    with pytest.raises(ValueError, match=r"MaskFeat: .*pixels is missing \(keys present: \['mask', 'video'\]\)"):
        model({"video": normalise(pixels), "mask": mask})
    with pytest.raises(ValueError, match=r"pixels is torch.float32, expected torch.uint8"):
        model({"video": normalise(pixels), "pixels": pixels.float(), "mask": mask})
    with pytest.raises(ValueError, match=r"pixels has shape \(1, 3, 8, 64, 64\), expected B×3×T×H×W with T=16"):
        model({"video": normalise(pixels), "pixels": pixels[:, :, :8], "mask": mask})


def test_mask_token_replaces_exactly_the_masked_embeddings():
    model = build_model(TINY, 16, 64)
    tokens, grid = model.backbone.embed(clip_batch(1, 16, 64, 64))
    mask = cube_masks(1, 16, 64)
    mixed = model.insert_mask_token(tokens, mask, grid).reshape(1, *grid, -1)
    unit_mask = mask.repeat_interleave(8, 2).repeat_interleave(8, 3)  # 1×8×2×2 units → 1×8×16×16 patches
    assert torch.equal(mixed[unit_mask], model.mask_token.detach().reshape(1, -1).expand(int(unit_mask.sum()), -1))
    assert torch.equal(mixed[~unit_mask], tokens.reshape(1, *grid, -1)[~unit_mask])


def test_images_and_non_square_clips_pretrain():
    image_model = build_model(TINY, num_frames=1, crop_size=64)
    out = image_model(pretrain_batch(pixel_batch(2, 1, 64, 64), cube_masks(2, 1, 64)))
    assert out["pred"].shape == (2, 1, 4, 4, 108) and torch.isfinite(out["loss"])
    video_model = build_model(TINY, 16, 64)
    generator = build_mask_generator("cube", (8, 2, 3), min_units=1)
    mask = torch.from_numpy(generator(np.random.default_rng(0)))[None]
    out = video_model(pretrain_batch(pixel_batch(1, 16, 64, 96), mask))
    assert out["pred"].shape == (1, 8, 4, 6, 108) and torch.isfinite(out["loss"])


def test_mask_that_does_not_fit_the_clip_is_named():
    model = build_model(TINY, 16, 64)
    pixels = pixel_batch(1, 16, 64, 64)
    with pytest.raises(ValueError, match=r"mask grid \(8, 3, 3\) does not divide the token grid \(8, 16, 16\)"):
        model(pretrain_batch(pixels, torch.zeros(1, 8, 3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"mask has shape \(1, 2, 2\), expected B×T'×H'×W'"):
        model(pretrain_batch(pixels, torch.zeros(1, 2, 2, dtype=torch.bool)))


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_model(TINY, 8, 64)
    batch = pretrain_batch(pixel_batch(2, 8, 64, 64), cube_masks(2, 8, 64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        loss = model(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_layer_ids_cover_mask_token_and_prediction_head():
    model = build_model(TINY, 16, 64)
    depth = model.backbone.cfg.depth
    assert model.layer_id("mask_token") == 0
    assert model.layer_id("pred_head.proj.weight") == depth + 1 == model.num_layers - 1
    assert model.layer_id("backbone.blocks.2.norm1.weight") == 3


def test_classifier_from_a_pretraining_checkpoint_at_another_input_size(tmp_path):
    pretrained = build_model(TINY, 16, 64)
    path = tmp_path / "pretrain.pt"
    torch.save({"model": pretrained.state_dict(), "step": 10}, path)
    classify = replace(TINY, task="classify", num_classes=5, init=str(path))
    model = build_model(classify, num_frames=8, crop_size=96)
    report = load_pretrained(build_model(replace(classify, init=None), 8, 96), path, allowed_missing=("head.",))
    assert report.source == "mfvideo"
    assert sorted(report.unexpected) == [
        "mask_token",
        "pred_head.norm.bias",
        "pred_head.norm.weight",
        "pred_head.proj.bias",
        "pred_head.proj.weight",
    ]
    assert sorted(report.missing) == ["head.norm.bias", "head.norm.weight", "head.proj.bias", "head.proj.weight"]
    assert "backbone.blocks.0.attn.rel_pos_t" in report.resized and "backbone.blocks.0.attn.rel_pos_h" in report.resized
    ours, theirs = model.state_dict(), pretrained.state_dict()
    assert torch.equal(ours["backbone.blocks.1.attn.qkv.weight"], theirs["backbone.blocks.1.attn.qkv.weight"])
    table = ours["backbone.blocks.0.attn.rel_pos_h"]
    assert table.shape[0] != theirs["backbone.blocks.0.attn.rel_pos_h"].shape[0]
    torch.testing.assert_close(table, resize_rel_pos(theirs["backbone.blocks.0.attn.rel_pos_h"], table.shape[0]))
    assert model({"video": clip_batch(1, 8, 96, 96)})["logits"].shape == (1, 5)


def test_pyslowfast_maskfeat_checkpoint_loads_strictly(tmp_path):
    source = build_model(TINY, 16, 64)
    names = {
        "backbone.": "",
        "pred_head.norm.": "pred_head.transforms.0.0.",
        "pred_head.proj.": "pred_head.projections.0.",
    }
    state = {}
    for key, value in source.state_dict().items():
        for ours, theirs in names.items():
            if key.startswith(ours):
                key = theirs + key[len(ours) :]
                break
        state[key] = value
    torch.save({"model_state": state, "epoch": 300}, tmp_path / "maskfeat.pyth")
    target = build_model(TINY, 16, 64)
    report = load_pretrained(target, tmp_path / "maskfeat.pyth")
    assert report.source == "pyslowfast"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_a_checkpoint_that_fits_almost_nothing_is_refused_naming_what_is_missing(tmp_path):
    """A model.init holding a stray tensor or two must not load silently and train from random weights."""
    source = build_model(TINY, 16, 64).state_dict()
    torch.save({"model": {"backbone.cls_token": source["backbone.cls_token"]}}, tmp_path / "stray.pt")
    classify = replace(TINY, task="classify", num_classes=5, init=str(tmp_path / "stray.pt"))
    with pytest.raises(
        ValueError,
        match=r"stray\.pt does not fit the model: \d+ of its \d+ tensors are missing "
        r"\(backbone\.patch_embed\.proj\.weight",
    ):
        build_model(classify, 16, 64)
