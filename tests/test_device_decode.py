"""Decoding on the device (`data.decode_device`, NVDEC on a GPU): the workers ship compressed bytes, frame indices and
crop boxes, and the training process decodes and crops. Run here with torchcodec on the CPU as the "device", the
batches must equal those decoded in the workers bit for bit: the same draws, the same frames, the same crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mfvideo.config.schema import DataConfig, MaskConfig
from mfvideo.data import decode, fields
from mfvideo.data.clips import FramePlan
from mfvideo.data.decode import DecodeError, DecoderUnavailable, Decoding, check_decoder
from mfvideo.data.device_decode import DeviceDecoding
from mfvideo.data.loader import build_test_loader, build_train_loader, read_policy
from mfvideo.data.stream import Placement, ShardSplit
from mfvideo.data.transforms import ClipGeometry, CropBox
from mfvideo.shards import DemoSource, ShardOptions, make_shards
from mfvideo.tasks import classify, pretrain
from mfvideo.tasks.common import Views

try:
    check_decoder("torchcodec")
    TORCHCODEC = ""
except DecoderUnavailable as err:
    TORCHCODEC = str(err)
pytestmark = pytest.mark.skipif(bool(TORCHCODEC), reason=TORCHCODEC)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-decode") / "demo"
    source = DemoSource(num_videos=10, width=80, height=64, min_frames=24, max_frames=48, seed=4)
    make_shards(source, ShardOptions(out=out, max_count=4, progress=False))
    return out


def _recipe(shards, **data):
    cfg = DataConfig(train=str(shards), val=str(shards), num_frames=4, sampling_rate=2, **data)
    return OmegaConf.create({"data": OmegaConf.structured(cfg), "mask": OmegaConf.structured(MaskConfig(min_units=1))})


@pytest.fixture
def on_cpu_device(monkeypatch):
    """Loaders built from here on decode on the CPU as their "device", with torchcodec; the device decodes, counted."""
    counted = []
    real = decode.TorchCodecMedia
    monkeypatch.setattr(Decoding, "of", classmethod(lambda cls, data: cls("torchcodec", "cpu")))
    monkeypatch.setattr("mfvideo.data.device_decode.TorchCodecMedia", lambda *a: counted.append(a[2]) or real(*a))
    return counted


def _train_batches(recipe, workers: int) -> list[dict]:
    recipe.data.num_workers = workers
    batching = pretrain.train_batching(recipe)
    return list(build_train_loader(recipe.data, batching, 3, Placement(num_workers=workers), seed=5))


def test_training_batches_decoded_on_the_device_equal_those_decoded_in_the_workers(shards, request):
    recipe = _recipe(shards, decoder="torchcodec", repeated_sampling=2, shuffle_buffer=4, crop_size=64)
    in_workers = _train_batches(recipe, workers=0)
    counted = request.getfixturevalue("on_cpu_device")
    on_device = _train_batches(recipe, workers=0)
    assert len(on_device) == len(in_workers) > 4
    # One decode per video and batch, not per clip: repeated sampling's clips share it.
    clips = sum(len(batch["key"]) for batch in on_device)
    assert set(counted) == {"cpu"} and clips // 2 <= len(counted) < clips
    for ours, theirs in zip(on_device, in_workers):
        assert ours.keys() == theirs.keys() and ours["key"] == theirs["key"]
        for name in ("video", "pixels", "mask"):
            assert torch.equal(ours[name], theirs[name]), name
    # Through a worker process too: the plans cross the process boundary.
    through_worker = _train_batches(recipe, workers=1)
    assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(through_worker, in_workers))


def test_test_views_decoded_on_the_device_equal_those_decoded_in_the_workers(shards, request):
    recipe = _recipe(shards, decoder="torchcodec", crop_size=32, test_short_side=40, num_workers=0)
    split = ShardSplit(str(shards), None, read_policy(recipe.data))

    def batches() -> list[dict]:
        batching = classify.eval_batching(recipe, Views(2, 3))
        return list(build_test_loader(recipe.data, split, batching, 4, Placement()))

    in_workers = batches()
    request.getfixturevalue("on_cpu_device")
    on_device = batches()
    assert len(on_device) == len(in_workers) == 15  # 10 videos × 2 clips × 3 crops
    for ours, theirs in zip(on_device, in_workers):
        assert ours["key"] == theirs["key"] and torch.equal(ours["view"], theirs["view"])
        assert torch.equal(ours["video"], theirs["video"])


def test_a_video_the_device_cannot_decode_loses_its_clips_and_the_rest_stay_aligned(shards):
    from mfvideo.data.tarstream import iter_shard

    url = sorted(shards.glob("*.tar"))[0]
    key, parts = next(iter(iter_shard(str(url))))
    geometry = ClipGeometry(CropBox(0, 0, 16, 16), (8, 8), flip=True)
    good = FramePlan(parts["mp4"], 8, (64, 80), np.arange(4), None, geometry)
    bad = FramePlan(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4, 8, (64, 80), np.arange(4), None, geometry)
    turned = FramePlan(parts["mp4"], 8, (80, 64), np.arange(4), None, geometry)  # headers and frames disagree
    batch = {
        fields.SAMPLE_KEY.name: ["a", "broken", "c", "turned"],
        fields.LABEL.name: torch.tensor([3, 4, 5, 6]),
        fields.MASK.name: torch.zeros(4, 2, 2, 2, dtype=torch.bool),
        fields.FRAME_PLANS.name: [good, bad, good, turned],
    }
    step = DeviceDecoding("cpu")
    out = step(batch, np.random.default_rng(0))
    assert out["key"] == ["a", "c"] and out["label"].tolist() == [3, 5] and out["mask"].shape[0] == 2
    assert out["video"].shape == (2, 3, 4, 8, 8) and out["video"].dtype == torch.uint8 and step.failures == 2
    assert fields.FRAME_PLANS.name not in out
    with pytest.raises(DecodeError, match="no clip of the batch decoded"):
        step({fields.SAMPLE_KEY.name: ["broken"], fields.FRAME_PLANS.name: [bad]}, np.random.default_rng(0))


def test_decoding_on_a_device_is_refused_where_it_cannot_follow():
    with pytest.raises(ValueError, match="needs the torchcodec decoder"):
        Decoding("pyav", "cuda")
    assert Decoding.of(OmegaConf.structured(DataConfig(train="x", decode_device="cpu"))).device is None
    with pytest.raises(DecodeError, match="decode in the workers only"):
        Decoding("torchcodec", "cpu").open(b"", "jpg")


def test_recipes_that_need_pixels_in_the_workers_refuse_decoding_on_the_device():
    from mfvideo.config.recipe import load_recipe
    from mfvideo.tasks import detect

    detection = load_recipe("recipes/demo_ava_ft.yaml", ["data.decode_device=cuda"])
    assert any("data.decode_device='cuda': detection's boxes" in p for p in detect.rules(detection))
    augmented = load_recipe("recipes/k400_mvit_s_ft.yaml", ["data.decode_device=cuda"])
    assert augmented.augment.rand_augment
    assert any("RandAugment" in p and "data.decode_device" in p for p in classify.rules(augmented))
    assert not any("decode_device" in p for p in classify.rules(load_recipe("recipes/k400_mvit_s_ft.yaml")))
