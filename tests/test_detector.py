"""RoIAlign (hand-computed values, gradients, torchvision where it imports) and the AVA detection model."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from mfvideo.models.checkpoint import load_pretrained
from mfvideo.models.classifier import MViTClassifier
from mfvideo.models.detector import DetectionHead, Detector
from mfvideo.models.maskfeat import MaskFeat
from mfvideo.models.mvit import mvit_tiny
from mfvideo.models.roi_align import roi_align, roi_align_torch, torchvision_roi_align
from models_helpers import clip_batch

# f[y, x] = 2^(4y + x): every bilinear mix of its entries is readable by hand
POWERS = (2.0 ** torch.arange(12.0)).reshape(1, 1, 3, 4)


def rois(*boxes, batch_index=0):
    return torch.tensor([[batch_index, *box] for box in boxes], dtype=torch.float32)


def test_bins_average_their_samples_aligned_or_not():
    # on a linear map bilinear sampling is exact, so each bin reads the map at the mean of its samples
    y, x = torch.meshgrid(torch.arange(6.0), torch.arange(8.0), indexing="ij")
    linear = (10 * y + x)[None, None]
    # box x 1..5, y 1..3: 2×2 bins of 2×1 pixels, 2×2 samples each; bin (0, 0) samples x 1.5, 2.5 and y 1.25, 1.75
    expected = torch.tensor([[17.0, 19.0], [27.0, 29.0]])
    for scale, box in ((1.0, (1, 1, 5, 3)), (0.5, (2, 2, 10, 6))):
        out = roi_align_torch(linear, rois(box), 2, scale, sampling_ratio=2, aligned=False)
        torch.testing.assert_close(out[0, 0], expected)
        out = roi_align_torch(linear, rois(box), 2, scale, sampling_ratio=2, aligned=True)
        torch.testing.assert_close(out[0, 0], expected - 0.5 * (10 + 1))  # pixel centres: every sample −0.5


@pytest.mark.parametrize(
    "centre, expected",
    [
        ((1.5, 0.5), (2 + 4 + 32 + 64) / 4),  # inside: the four neighbours, a quarter each
        ((-0.5, 1.0), 16.0),  # x in [−1, 0]: reads column 0
        ((-1.5, 1.0), 0.0),  # x < −1: contributes zero
        ((0.0, -1.0), 1.0),  # y = −1 exactly still reads row 0
        ((3.5, 2.0), 2048.0),  # x in (W − 1, W]: reads the last column
        ((4.0, 0.0), 8.0),  # x = W exactly: still the last column
        ((4.25, 0.0), 0.0),  # x > W: zero
        ((2.25, 2.75), 0.75 * 1024 + 0.25 * 2048),  # y past H − 1: the last row, x interpolated
    ],
)
def test_samples_follow_torchvisions_boundary_rules(centre, expected):
    cx, cy = centre  # one sample per bin, 1×1 output: the sample is the box centre
    out = roi_align_torch(POWERS, rois((cx - 1, cy - 1, cx + 1, cy + 1)), 1, 1.0, sampling_ratio=1, aligned=False)
    assert out.item() == expected


def test_adaptive_sampling_counts_samples_per_box():
    squares = (torch.arange(6.0) ** 2).reshape(1, 1, 1, 6)  # one row: every y reads it
    boxes = rois((0.5, 0, 3.5, 1), (0, 0, 5, 1))
    # 3 and 5 px wide → 3 and 5 samples: x = 1, 2, 3 and x = 0.5, 1.5, …, 4.5
    out = roi_align_torch(squares, boxes, 1, 1.0, sampling_ratio=0, aligned=False)
    torch.testing.assert_close(out.flatten(), torch.tensor([(1 + 4 + 9) / 3, (0.5 + 2.5 + 6.5 + 12.5 + 20.5) / 5]))
    assert torch.equal(roi_align_torch(squares, boxes, 1, 1.0, sampling_ratio=-1, aligned=False), out)
    # a fixed ratio: 2 samples at x = 1.25, 2.75 for the first box
    out = roi_align_torch(squares, boxes[:1], 1, 1.0, sampling_ratio=2, aligned=False)
    assert out.item() == pytest.approx((1.75 + 7.75) / 2)


def test_degenerate_boxes():
    point = rois((2, 1, 2, 1))
    # not aligned: widened to 1×1 from its corner, one sample at (2.5, 1.5)
    out = roi_align_torch(POWERS, point, 1, 1.0, sampling_ratio=0, aligned=False)
    assert out.item() == (64 + 128 + 1024 + 2048) / 4
    # aligned: no extent, so no adaptive samples and a zero output; a fixed sample sits at the shifted corner
    assert roi_align_torch(POWERS, point, 1, 1.0, sampling_ratio=0, aligned=True).item() == 0.0
    out = roi_align_torch(POWERS, point, 1, 1.0, sampling_ratio=1, aligned=True)
    assert out.item() == (2 + 4 + 32 + 64) / 4


def test_box_index_picks_each_boxs_map_and_both_forms_agree():
    maps = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0.5, 1.0, 4.0, 3.5], [1.0, 0.0, 6.5, 4.5], [0.5, 1.0, 4.0, 3.5]])
    box_index = torch.tensor([2, 0, 2])  # clip 2 has two boxes, clip 1 none
    out = roi_align(maps, boxes, (2, 3), 1.0, 0, True, box_index=box_index)
    assert out.shape == (3, 2, 2, 3)
    torch.testing.assert_close(
        out, roi_align(maps, torch.cat((box_index[:, None].float(), boxes), 1), (2, 3), 1.0, 0, True)
    )
    for k in range(3):
        alone = roi_align_torch(maps[box_index[k]][None], rois(boxes[k].tolist()), (2, 3), 1.0, 0, True)
        torch.testing.assert_close(out[k], alone[0])
    with pytest.raises(ValueError, match=r"K×5"):
        roi_align(maps, boxes, 7)


def test_gradients_reach_the_features():
    maps = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor(
        [[0, -1.3, 0.7, 3.2, 4.9], [1, 2.2, 1.1, 7.5, 3.3], [1, 0.3, 0.2, 0.9, 0.6]], dtype=torch.float64
    )
    for ratio in (0, 2):
        for aligned in (True, False):
            assert torch.autograd.gradcheck(lambda m: roi_align_torch(m, boxes, 3, 1.0, ratio, aligned), (maps,))


@pytest.mark.skipif(
    torchvision_roi_align is None,
    reason="torchvision does not import here (not installed, or its ops do not load with this torch "
    "build): only the plain-torch RoIAlign exists to compare",
)
def test_plain_torch_roi_align_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 9, 11, generator=g)
    corners = torch.rand(40, 2, generator=g) * torch.tensor([11.0, 9.0]) * 2.4 - 3.0
    sizes = torch.rand(40, 2, generator=g) * torch.tensor([11.0, 9.0]) * 1.6
    boxes = torch.cat((torch.randint(0, 3, (40, 1), generator=g).float(), corners, corners + sizes), 1) * torch.tensor(
        [1.0, 2.0, 2.0, 2.0, 2.0]
    )
    for ratio in (0, 1, 2):
        for aligned in (True, False):
            for size in (7, (2, 3)):
                ours = roi_align_torch(maps, boxes, size, 0.5, ratio, aligned)
                theirs = torchvision_roi_align(maps, boxes, size, 0.5, ratio, aligned)
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------------ detector

NUM_CLASSES = 5


def tiny_detector(**kwargs) -> Detector:
    torch.manual_seed(0)
    model = Detector(mvit_tiny(), (4, 64, 64), NUM_CLASSES, dropout=0.0, **kwargs).eval()
    nn.init.normal_(model.roi_head.proj.weight)  # informative scores: the initial head is scaled to near zero
    return model


def detection_batch(video, boxes, box_index):
    return {
        "video": video,
        "boxes": torch.as_tensor(boxes, dtype=torch.float32),
        "box_index": torch.as_tensor(box_index, dtype=torch.int64),
    }


@pytest.mark.parametrize("height, width", [(64, 64), (64, 96), (96, 64)])
def test_detector_scores_every_box_on_square_and_non_square_clips(height, width):
    model = tiny_detector()
    video = clip_batch(2, 4, height, width)
    batch = detection_batch(video, [[4, 8, 40, 60], [0, 0, width, height], [20, 10, width - 1, height - 2]], [0, 1, 1])
    batch["box_labels"] = torch.tensor([[1.0, 0, 0, 1, 0], [0] * 5, [0, 1, 0, 0, 0]])
    out = model(batch)
    assert out["scores"].shape == out["logits"].shape == (3, NUM_CLASSES)
    torch.testing.assert_close(out["scores"], torch.sigmoid(out["logits"]))
    labels, log_sigmoid = batch["box_labels"], nn.functional.logsigmoid
    expected = -(labels * log_sigmoid(out["logits"]) + (1 - labels) * log_sigmoid(-out["logits"])).mean()
    torch.testing.assert_close(out["loss"], expected)
    assert model.roi_head.spatial_scale == 1 / 16
    x, grid = model.backbone(video)
    assert model.roi_head.feature_map(x, grid).shape == (2, model.backbone.dim_out, height // 16, width // 16)


def test_a_batch_without_boxes_has_a_zero_loss_that_reaches_every_parameter():
    model = tiny_detector().train()
    batch = detection_batch(clip_batch(2, 4, 64, 64), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    batch["box_labels"] = torch.zeros(0, NUM_CLASSES)
    out = model(batch)
    assert out["scores"].shape == (0, NUM_CLASSES) and out["loss"].item() == 0.0
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_boxs_scores_come_from_its_own_clip():
    model = tiny_detector()
    a, b = clip_batch(2, 4, 64, 96)
    box = [8, 4, 56, 60]
    scores = model(detection_batch(torch.stack((a, b)), [box, box], [0, 1]))["scores"]
    assert not torch.allclose(scores[0], scores[1], atol=1e-3)  # the clips differ, so do their scores
    swapped = model(detection_batch(torch.stack((b, a)), [box, box], [1, 0]))["scores"]
    torch.testing.assert_close(swapped, scores, atol=1e-5, rtol=0)
    same = model(detection_batch(torch.stack((a, a)), [box, box], [0, 1]))["scores"]
    torch.testing.assert_close(same[1], same[0], atol=1e-6, rtol=0)


def test_a_clips_scores_do_not_depend_on_the_size_of_its_batch_mates():
    """Full test frames of movies of other aspect ratios share a batch, padded to the largest (mfvideo.data.collate);
    with `video_size` the detector sees each clip at its own size rounded up to the stride, as in a batch alone."""
    model = tiny_detector()
    sizes = [(72, 96), (72, 128), (64, 96)]  # 4:3 and 16:9 frames; 72 is not a multiple of 16
    clips = [clip_batch(1, 4, h, w)[0] for h, w in sizes]
    boxes, box_index = [[8, 4, 56, 60], [0, 0, 96, 72], [30, 10, 120, 70], [4, 4, 90, 60]], [1, 0, 1, 2]

    def packed(members, multiple=32):  # as pack_clips pads: right and bottom, to the largest, to a multiple
        height = -(-max(clip.shape[-2] for clip in members) // multiple) * multiple
        width = -(-max(clip.shape[-1] for clip in members) // multiple) * multiple
        video = torch.zeros(len(members), 3, 4, height, width)
        for row, clip in zip(video, members):
            row[:, :, : clip.shape[-2], : clip.shape[-1]] = clip
        return video

    alone = torch.cat(
        [
            model({**detection_batch(packed([clips[i]]), [box], [0]), "video_size": [sizes[i]]})["scores"]
            for box, i in zip(boxes, box_index)
        ]
    )
    together = detection_batch(packed(clips), boxes, box_index)
    torch.testing.assert_close(model({**together, "video_size": sizes})["scores"], alone, atol=1e-5, rtol=0)
    # without the sizes the padding to the 128-wide clip reaches the others' every token (attention is global)
    assert not torch.allclose(model(together)["scores"][1], alone[1], atol=1e-3)


def test_the_head_reads_only_the_features_under_a_box():
    torch.manual_seed(0)
    head = DetectionHead(8, NUM_CLASSES, 0.0, 1 / 16).eval()
    grid = (2, 4, 6)
    tokens = torch.randn(1, 1 + 2 * 4 * 6, 8)
    box = torch.tensor([[0.0, 0.0, 32.0, 32.0]])  # feature cells 0..2 by 0..2 once aligned (−0.5 .. 1.5)
    index = torch.zeros(1, dtype=torch.int64)
    before = head(tokens, grid, box, index)
    grid_tokens = tokens[:, 1:].reshape(1, *grid, 8)
    far = grid_tokens.clone()
    far[:, :, :, 3:] += torch.randn(1, 2, 4, 3, 8)  # columns the box does not reach
    far[:, :, 3:, :] += torch.randn(1, 2, 1, 6, 8)  # nor this row
    torch.testing.assert_close(head(torch.cat((tokens[:, :1], far.flatten(1, 3)), 1), grid, box, index), before)
    reversed_time = grid_tokens.flip(1)  # the head averages over time
    torch.testing.assert_close(
        head(torch.cat((tokens[:, :1], reversed_time.flatten(1, 3)), 1), grid, box, index), before
    )
    near = grid_tokens.clone()
    near[:, 0, 1, 1] += torch.randn(8)
    assert not torch.allclose(head(torch.cat((tokens[:, :1], near.flatten(1, 3)), 1), grid, box, index), before)


def test_keeping_the_last_q_stride_gives_the_1_32_grid():
    model = tiny_detector(stride=32)
    assert model.roi_head.spatial_scale == 1 / 32 and model.backbone.cfg.output_stride == (2, 32, 32)
    video = clip_batch(1, 4, 64, 96)
    x, grid = model.backbone(video)
    assert grid == (2, 2, 3)
    assert model(detection_batch(video, [[0, 0, 40, 40]], [0]))["scores"].shape == (1, NUM_CLASSES)


def head_keys(model):
    return sorted(k for k in model.state_dict() if k.startswith("roi_head."))


def assert_backbone_loaded(model, source):
    for key, value in source.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key


def test_a_maskfeat_checkpoint_leaves_only_the_head_fresh(tmp_path):
    torch.manual_seed(1)
    source = MaskFeat(replace(mvit_tiny(), keep_last_q_stride=False), (4, 64, 64))
    path = tmp_path / "maskfeat.pt"
    torch.save({"model": source.state_dict()}, path)
    model = tiny_detector()
    report = load_pretrained(model, path, allowed_missing=Detector.fresh_prefixes)
    assert sorted(report.missing) == head_keys(model)
    assert sorted(report.unexpected) == [
        "mask_token",
        "pred_head.norm.bias",
        "pred_head.norm.weight",
        "pred_head.proj.bias",
        "pred_head.proj.weight",
    ]
    assert_backbone_loaded(model, source)
    with pytest.raises(ValueError, match="roi_head"):
        load_pretrained(tiny_detector(), path)


@pytest.mark.parametrize("stride", [16, 32])
def test_a_classifier_checkpoint_loads_the_backbone_and_drops_its_head(tmp_path, stride):
    torch.manual_seed(2)
    source = MViTClassifier(mvit_tiny(), (4, 64, 64), num_classes=7)  # Kinetics fine-tuning keeps the 1/32 grid
    path = tmp_path / "classifier.pt"
    torch.save(source.state_dict(), path)
    model = tiny_detector(stride=stride)
    report = load_pretrained(model, path, allowed_missing=Detector.fresh_prefixes)
    assert sorted(report.missing) == head_keys(model)
    assert sorted(report.unexpected) == ["head.norm.bias", "head.norm.weight", "head.proj.bias", "head.proj.weight"]
    assert_backbone_loaded(model, source)
    out = model(detection_batch(clip_batch(1, 4, 64, 64), [[0, 0, 40, 40]], [0]))
    assert torch.isfinite(out["scores"]).all()


def test_layer_ids_put_the_head_on_top():
    model = tiny_detector()
    depth = model.backbone.cfg.depth
    ids = {name: model.layer_id(name) for name, _ in model.named_parameters()}
    assert ids["backbone.cls_token"] == 0 and ids["backbone.blocks.0.attn.qkv.weight"] == 1
    assert {ids[k] for k in ids if k.startswith("roi_head.")} == {depth + 1} == {model.num_layers - 1}


def test_bad_detection_batches_are_named():
    model = tiny_detector()
    video = torch.zeros(1, 3, 4, 64, 64)
    with pytest.raises(ValueError, match=r"Detector: batch does not fit: box_index is missing"):
        model({"video": video, "boxes": torch.zeros(1, 4)})
    with pytest.raises(ValueError, match=r"boxes has shape \(1, 3\), expected R×4"):
        model(detection_batch(video, [[0, 0, 1]], [0]))
    with pytest.raises(ValueError, match="box_index is torch.float32, expected torch.int64"):
        model({"video": video, "boxes": torch.zeros(1, 4), "box_index": torch.zeros(1)})
    with pytest.raises(ValueError, match=rf"box_labels has shape \(1, 80\), expected R×A with A={NUM_CLASSES}"):
        model({**detection_batch(video, [[0, 0, 1, 1]], [0]), "box_labels": torch.zeros(1, 80)})
    with pytest.raises(ValueError, match="video_size has 2 sizes for the 1 clips"):
        model({**detection_batch(video, [[0, 0, 1, 1]], [0]), "video_size": [(64, 64), (64, 64)]})
