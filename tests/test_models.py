"""MViTv2 backbone, classifier, build_model, complexity metadata and checkpoint import."""

from dataclasses import replace

import pytest
import torch

from mfvideo.benchmarks.complexity import MEASURED, build_on_meta, count_parameters, measure
from mfvideo.config.schema import ModelConfig
from mfvideo.models.checkpoint import load_pretrained, load_state, read_checkpoint
from mfvideo.models.mvit import MViT, mvit_tiny, rel_pos_lookup, resize_rel_pos
from mfvideo.tasks import build_model
from models_helpers import num_elements, random_state, torchvision_mvit_v2_s_shapes

TINY_CLASSIFY = ModelConfig(arch="mvit_tiny", task="classify", num_classes=7, dropout=0.0)


def test_mvit_v2_s_has_torchvisions_parameter_count():
    model = build_on_meta(
        ModelConfig(arch="mvit_s", task="classify", num_classes=400, dim_mul_in_att=True, pooling="cls")
    )
    assert count_parameters(model) == 34_537_744


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_measured_metadata_is_what_the_models_measure(name):
    meta = MEASURED[name]
    params, gmacs = measure(meta.model, meta.num_frames)
    assert params == meta.num_params
    assert gmacs == pytest.approx(meta.gmacs, abs=1e-3)


def test_measured_metadata_matches_published_figures():
    published = {  # (millions of parameters, GMACs), tolerance
        "mvit_s_supervised_classify": ((34.5, 64.224), (0.05, 0.01)),  # torchvision
        "mvit_s_maskfeat_classify": ((36.0, 71.0), (0.5, 0.5)),  # MaskFeat paper
        "mvit_l_maskfeat_classify": ((218.0, 377.0), (1.0, 0.5)),
        "mvit_b_supervised_classify": ((51.2, 225.0), (0.1, 1.0)),  # MViTv2 paper, 32×224²
    }
    for name, ((params_m, gmacs), (tol_p, tol_g)) in published.items():
        meta = MEASURED[name]
        assert abs(meta.num_params / 1e6 - params_m) <= tol_p, name
        assert abs(meta.gmacs - gmacs) <= tol_g, name
    # the pretraining graphs differ from the fine-tuning ones only by the last-stage Q stride
    assert abs(MEASURED["mvit_s_maskfeat_pretrain"].num_params / 1e6 - 36.0) < 0.5
    assert abs(MEASURED["mvit_l_maskfeat_pretrain"].num_params / 1e6 - 218.0) < 1.0


def test_block_layout_of_maskfeat_s():
    blocks = build_on_meta(ModelConfig(arch="mvit_s", task="pretrain")).backbone.block_configs
    assert [b.stride_q for b in blocks if b.stride_q != (1, 1, 1)] == [(1, 2, 2), (1, 2, 2)]
    assert [b.stride_kv for b in blocks] == [(1, 8, 8)] + [(1, 4, 4)] * 2 + [(1, 2, 2)] * 13
    assert [(b.dim_in, b.dim_out) for b in blocks if b.dim_in != b.dim_out] == [(96, 192), (192, 384), (384, 768)]
    assert [i for i, b in enumerate(blocks) if b.dim_in != b.dim_out] == [0, 2, 13]  # MLP of each stage's last
    assert [b.num_heads for b in blocks] == [1, 2, 2] + [4] * 11 + [8, 8]


def test_classifier_runs_on_video_images_and_non_square_clips():
    model = build_model(TINY_CLASSIFY, num_frames=8, crop_size=64).eval()
    for shape in [(2, 3, 8, 64, 64), (1, 3, 1, 64, 64), (1, 3, 8, 64, 96), (1, 3, 16, 96, 64)]:
        logits = model({"video": torch.randn(shape)})["logits"]
        assert logits.shape == (shape[0], 7) and torch.isfinite(logits).all()


def test_token_grids_for_video_image_and_non_square():
    backbone = MViT(replace(mvit_tiny(), keep_last_q_stride=False), (16, 64, 64))
    assert backbone(torch.randn(1, 3, 16, 64, 64))[1] == (8, 4, 4)
    assert backbone(torch.randn(1, 3, 1, 64, 64))[1] == (1, 4, 4)
    assert backbone(torch.randn(1, 3, 16, 64, 128))[1] == (8, 4, 8)


def test_rel_pos_lookup_uses_offsets_and_interpolates():
    table = torch.arange(7.0)[:, None].repeat(1, 2)  # entry i = offset i - 3
    looked_up = rel_pos_lookup(table, 4, 4)[..., 0]
    q, k = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    assert torch.equal(looked_up, (q - k + 3).float())
    assert torch.allclose(resize_rel_pos(table, 13)[:, 0], torch.linspace(0, 6, 13).clamp(0, 6), atol=0.3)
    assert resize_rel_pos(table, 13)[0, 0] == 0 and resize_rel_pos(table, 13)[-1, 0] == 6


def test_activation_checkpointing_gives_the_same_gradients():
    video = torch.randn(1, 3, 4, 64, 64)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(replace(TINY_CLASSIFY, activation_checkpointing=ckpt), 4, 64).train()
        model({"video": video})["logits"].sum().backward()
        grads.append(model.backbone.blocks[0].attn.qkv.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_drop_path_is_stochastic_in_training_only():
    torch.manual_seed(0)
    model = build_model(replace(TINY_CLASSIFY, drop_path=0.5), 8, 64)
    video = torch.randn(2, 3, 8, 64, 64)
    model.train()
    assert not torch.equal(model({"video": video})["logits"], model({"video": video})["logits"])
    model.eval()
    assert torch.equal(model({"video": video})["logits"], model({"video": video})["logits"])


def test_layer_ids_for_layer_decay():
    model = build_model(TINY_CLASSIFY, 8, 64)
    depth = model.backbone.cfg.depth
    assert model.num_layers == depth + 2
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["backbone.patch_embed.proj.weight"] == 0 and ids["backbone.cls_token"] == 0
    assert ids["backbone.blocks.0.attn.qkv.weight"] == 1
    assert ids[f"backbone.blocks.{depth - 1}.mlp.fc2.bias"] == depth
    assert ids["head.norm.weight"] == ids["head.proj.weight"] == depth + 1


def test_classification_head_is_scaled_down_at_init():
    model = build_model(TINY_CLASSIFY, 8, 64)
    assert 0.01 < model.backbone.blocks[0].attn.qkv.weight.std() < 0.03
    assert 0.01e-3 < model.head.proj.weight.std() < 0.03e-3
    assert torch.allclose(model.head.proj.bias, torch.full((7,), 0.02 * 0.001))


def test_build_model_rejects_unknown_task_and_arch():
    with pytest.raises(ValueError, match="model.task='segment'"):
        build_model(ModelConfig(arch="mvit_tiny", task="segment"), 16, 64)
    with pytest.raises(ValueError, match="model.arch='mvit_xl'"):
        build_model(ModelConfig(arch="mvit_xl", task="classify"), 16, 64)
    with pytest.raises(ValueError, match="pooling='max'"):
        build_model(replace(TINY_CLASSIFY, pooling="max"), 16, 64)


def test_bad_video_shape_is_named():
    model = build_model(TINY_CLASSIFY, 8, 64)
    with pytest.raises(ValueError, match=r"video has shape \(2, 8, 64, 64\), expected B×3×T×H×W"):
        model({"video": torch.randn(2, 8, 64, 64)})


# --------------------------------------------------------------------------------------------------- checkpoints


def test_torchvision_layout_loads_strictly_into_mvit_v2_s():
    shapes = torchvision_mvit_v2_s_shapes()
    assert num_elements(shapes) == 34_537_744
    state = random_state(shapes)
    model = build_model(
        ModelConfig(arch="mvit_s", task="classify", num_classes=400, dim_mul_in_att=True, pooling="cls"), 16, 224
    )
    report = load_state(model, state, strict=True)
    assert report.source == "torchvision" and not report.missing and not report.unexpected and not report.resized
    assert len(report.loaded) == len(state) == len(model.state_dict())
    own = model.state_dict()
    pairs = {
        "conv_proj.weight": "backbone.patch_embed.proj.weight",
        "blocks.1.attn.pool_q.pool.weight": "backbone.blocks.1.attn.pool_q.weight",
        "blocks.1.attn.pool_v.norm_act.0.bias": "backbone.blocks.1.attn.norm_v.bias",
        "blocks.3.project.weight": "backbone.blocks.3.proj.weight",
        "blocks.7.mlp.3.weight": "backbone.blocks.7.mlp.fc2.weight",
        "blocks.15.attn.project.0.bias": "backbone.blocks.15.attn.proj.bias",
        "blocks.2.attn.rel_pos_t": "backbone.blocks.2.attn.rel_pos_t",
        "norm.weight": "head.norm.weight",
        "head.1.weight": "head.proj.weight",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(own[ours], state[theirs]), theirs
    assert torch.equal(own["backbone.cls_token"].flatten(), state["pos_encoding.class_token"])


def test_torchvision_layout_into_maskfeat_layout_names_the_mismatch():
    model = build_model(ModelConfig(arch="mvit_s", task="classify", num_classes=400), 16, 224)
    with pytest.raises(ValueError, match="dim_mul_in_att"):
        load_state(model, random_state(torchvision_mvit_v2_s_shapes()))


def pyslowfast_layout(state):
    """Our classifier's state dict renamed the way PySlowFast's MViT names it, saved as its checkpoints are."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("backbone.", "").replace("head.norm.", "norm.").replace("head.proj.", "head.projection.")
        renamed["module." + key] = value.clone()
    return {"model_state": renamed, "epoch": torch.tensor(100)}


def test_pyslowfast_checkpoint_file_loads(tmp_path):
    source = build_model(TINY_CLASSIFY, 8, 64)
    path = tmp_path / "checkpoint_epoch_00100.pyth"
    checkpoint = pyslowfast_layout(source.state_dict())
    checkpoint["model_state"]["module.hogs.0.weight_x"] = torch.ones(3, 1, 3, 3)  # fixed filters: ignored
    torch.save(checkpoint, path)
    target = build_model(TINY_CLASSIFY, 8, 64)
    report = load_pretrained(target, path)
    assert report.source == "pyslowfast"
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "bad.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": replace(TINY_CLASSIFY)}, path)
    with pytest.raises(ValueError, match="bad.pt"):
        read_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_a_classifier_of_another_class_count_loads_all_but_its_head_projection(tmp_path):
    """K400 → SSv2: the backbone and the head's norm load, the 400-way projection is left at init, and testing
    (strict) still refuses such weights."""
    source = build_model(TINY_CLASSIFY, 8, 64)
    path = tmp_path / "k7.pt"
    torch.save(source.state_dict(), path)
    target = build_model(replace(TINY_CLASSIFY, num_classes=5), 8, 64)
    initial_proj = target.head.proj.weight.clone()
    report = load_pretrained(target, path, allowed_missing=target.fresh_prefixes)
    assert sorted(report.replaced) == ["head.proj.bias", "head.proj.weight"]
    assert torch.equal(target.head.proj.weight, initial_proj)
    assert torch.equal(target.head.norm.weight, source.head.norm.weight)
    assert torch.equal(target.backbone.blocks[3].mlp.fc2.weight, source.backbone.blocks[3].mlp.fc2.weight)
    with pytest.raises(ValueError, match="head.proj.weight"):
        load_pretrained(build_model(replace(TINY_CLASSIFY, num_classes=5), 8, 64), path)
