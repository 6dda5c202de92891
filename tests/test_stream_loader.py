"""The loaders end to end on shards made by make_shards: batch contract, masks, images, ranks, resume, bad samples."""

import copy
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from loader_helpers import build_test_loader, build_train_loader
from mfvideo.config.schema import DataConfig, MaskConfig
from mfvideo.data.shardlist import expand_pattern
from mfvideo.data.stream import TooManyFailures
from mfvideo.data.tarstream import iter_shard
from stream_helpers import demo_shards, shard_counts, truncated_copy
from stream_helpers import image_shards as make_image_shards


@pytest.fixture(scope="module")
def uneven_shards():
    pattern = demo_shards()
    counts = shard_counts(pattern)
    assert sum(counts) == 53 and len(counts) == 9 and max(counts) - min(counts) >= 4  # really uneven
    return pattern


@pytest.fixture(scope="module")
def image_shards():
    return make_image_shards()


def data_cfg(pattern, **overrides):
    values = dict(
        train=pattern,
        val=pattern,
        num_frames=4,
        sampling_rate=2,
        crop_size=64,
        num_workers=0,
        shuffle_buffer=6,
        test_short_side=64,
        test_clips=2,
        test_crops=1,
    )
    values.update(overrides)
    return OmegaConf.structured(DataConfig(**values))


def mask_cfg(mode="cube"):
    return OmegaConf.structured(MaskConfig(mode=mode))


def train_loader(cfg, masks, *args, **kwargs):
    """Labelled training batches, with masks unless mask.mode is none."""
    fields = ("label",) if masks.mode == "none" else ("label", "mask")
    return build_train_loader(cfg, masks, *args, fields=fields, **kwargs)


def test_train_batches_follow_the_contract(uneven_shards):
    loader = train_loader(data_cfg(uneven_shards), mask_cfg(), 4, 0, 1, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 53 // 4
    for batch in batches:
        assert batch["video"].shape == (4, 3, 4, 64, 64) and batch["video"].dtype == torch.float32
        assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
        assert batch["mask"].shape == (4, 2, 2, 2) and batch["mask"].dtype == torch.bool
        assert len(batch["key"]) == 4
    masks = torch.cat([b["mask"] for b in batches]).float()
    assert masks.mean(dim=(1, 2, 3)).eq(3 / 8).all()  # round(8 units × 0.4) = 3 masked units per clip
    assert abs(torch.cat([b["video"] for b in batches]).mean().item()) < 1.5  # normalised, not 0..255
    keys = [k for b in batches for k in b["key"]]
    assert len(set(keys)) == len(keys)  # one worker, 52 of 53 samples: no repeats within the epoch


def test_epochs_reshuffle_and_repeat_deterministically(uneven_shards):
    def keys(epoch, seed=0):
        loader = train_loader(data_cfg(uneven_shards), mask_cfg("none"), 4, 0, 1, seed=seed)
        loader.set_epoch(epoch)
        return [k for batch in loader for k in batch["key"]]

    first = keys(0)
    assert keys(0) == first
    assert keys(1) != first and keys(0, seed=1) != first


def test_no_mask_key_without_masking(uneven_shards):
    batch = next(iter(train_loader(data_cfg(uneven_shards), mask_cfg("none"), 2, 0, 1, seed=0)))
    assert "mask" not in batch and set(batch) == {"video", "label", "key"}


def test_images_become_single_frame_clips(image_shards):
    cfg = data_cfg(image_shards, num_frames=1, shuffle_buffer=0)
    batches = list(train_loader(cfg, mask_cfg("block"), 2, 0, 1, seed=0))
    assert len(batches) == 11 // 2
    for batch in batches:
        assert batch["video"].shape == (2, 3, 1, 64, 64)
        assert batch["mask"].shape == (2, 1, 4, 4)  # 2-D block grid: crop / 16
    views = next(iter(build_test_loader(cfg, 3, 0, 1)))
    assert views["video"].shape == (3, 3, 1, 64, 64)


def test_repeated_sampling_emits_k_clips_per_video(uneven_shards):
    cfg = data_cfg(uneven_shards, repeated_sampling=3)
    loader = train_loader(cfg, mask_cfg(), 6, 0, 1, seed=0)
    batches = list(loader)
    assert len(batches) == 53 * 3 // 6
    for batch in batches:
        assert batch["key"][0::3] == batch["key"][1::3] == batch["key"][2::3]
        assert not torch.equal(batch["video"][0], batch["video"][1])  # independently sampled and augmented


@pytest.mark.parametrize("world_size", [2, 3])
def test_every_rank_gets_the_same_number_of_batches(uneven_shards, world_size):
    counts, seen = [], []
    for rank in range(world_size):
        loader = train_loader(data_cfg(uneven_shards, num_workers=0), mask_cfg("none"), 3, rank, world_size, 0)
        loader.set_epoch(2)
        batches = list(loader)
        counts.append((len(batches), len(loader)))
        seen += [k for b in batches for k in b["key"]]
    expected = 53 // (world_size * 3)
    assert counts == [(expected, expected)] * world_size
    assert len(set(seen)) >= 0.75 * len(seen)  # ranks read different shards


@pytest.mark.slow
def test_ranks_with_worker_processes_stay_equal(uneven_shards):
    lengths = []
    for rank in range(2):
        loader = train_loader(data_cfg(uneven_shards, num_workers=2), mask_cfg("none"), 3, rank, 2, 0)
        lengths.append((len(list(loader)), len(loader)))
    assert lengths == [(53 // 6, 53 // 6)] * 2


def test_test_loader_covers_every_video_once_with_equal_batches(uneven_shards):
    keys_in_order = [key for url in expand_pattern(uneven_shards) for key, _ in iter_shard(url)]
    lengths, views = [], {}
    for rank in range(3):
        loader = build_test_loader(data_cfg(uneven_shards), 4, rank, 3)
        batches = list(loader)
        lengths.append((len(batches), len(loader)))
        for batch in batches:
            assert batch["video"].shape[1:] == (3, 4, 64, 64)
            for key, index, view in zip(batch["key"], batch["video_index"].tolist(), batch["view"].tolist()):
                views.setdefault(index, set()).add(view)
                assert key == keys_in_order[index]
    assert len({n for n, _ in lengths}) == 1 and all(n == length for n, length in lengths)
    assert sorted(views) == list(range(53)) and all(v == {0, 1} for v in views.values())


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [0, 4])
def test_resume_mid_epoch_gives_the_remaining_samples(uneven_shards, stop_after):
    cfg = data_cfg(uneven_shards, num_workers=2, shuffle_buffer=5, repeated_sampling=3)
    loader = train_loader(cfg, mask_cfg(), 4, 0, 1, seed=5)
    loader.set_epoch(1)
    keys, videos, state = [], [], None
    for step, batch in enumerate(loader):
        keys.append(batch["key"])
        videos.append(batch["video"])
        if step == stop_after:
            state = copy.deepcopy(loader.state_dict())
    assert state["epoch"] == 1

    resumed = train_loader(cfg, mask_cfg(), 4, 0, 1, seed=5)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert [b["key"] for b in rest] == keys[stop_after + 1 :]
    assert all(torch.equal(b["video"], v) for b, v in zip(rest, videos[stop_after + 1 :]))
    resumed.set_epoch(2)  # the next epoch starts from its beginning, exactly as a fresh loader's epoch 2
    next_epoch = [b["key"] for b in resumed]
    assert len(next_epoch) == len(resumed)
    fresh = train_loader(cfg, mask_cfg(), 4, 0, 1, seed=5)
    fresh.set_epoch(2)
    assert next_epoch == [b["key"] for b in fresh]
    switched = train_loader(cfg, mask_cfg(), 4, 0, 1, seed=5)
    switched.load_state_dict(state)
    switched.set_epoch(2)  # another epoch than the loaded one: the loaded position is dropped
    assert [b["key"] for b in switched] == next_epoch


def test_resume_restores_the_shuffle_buffer_without_decoding_consumed_samples(uneven_shards, monkeypatch):
    cfg = data_cfg(uneven_shards, shuffle_buffer=8)
    loader = train_loader(cfg, mask_cfg("none"), 4, 0, 1, seed=3)
    batches = iter(loader)
    for _ in range(5):
        next(batches)
    state = copy.deepcopy(loader.state_dict())
    expected = [b["key"] for b in batches]

    import mfvideo.data.decode as decode_module

    opened = []
    real_open = decode_module.open_media
    monkeypatch.setattr(decode_module, "open_media", lambda *a: opened.append(1) or real_open(*a))
    resumed = train_loader(cfg, mask_cfg("none"), 4, 0, 1, seed=3)
    resumed.load_state_dict(state)
    assert [b["key"] for b in resumed] == expected
    assert len(opened) == 4 * len(expected)  # exactly the emitted videos were decoded, none replayed


def test_corrupt_sample_is_skipped_counted_and_logged(uneven_shards, tmp_path, caplog):
    pattern, broken = truncated_copy(uneven_shards, tmp_path / "broken", broken=[4])
    loader = train_loader(data_cfg(pattern, shuffle_buffer=0), mask_cfg("none"), 2, 0, 1, seed=0)
    with caplog.at_level(logging.WARNING):
        keys = [k for batch in loader for k in batch["key"]]
    assert len(keys) == 52 and broken[0] not in keys and len(set(keys)) == 52
    assert loader.state_dict()["loader"]["dataset_state"]["failures"] == 1
    assert any(broken[0] in r.message and "-000000.tar" in r.message for r in caplog.records)


def test_too_many_failures_stop_the_run(uneven_shards, tmp_path):
    pattern, _ = truncated_copy(uneven_shards, tmp_path / "broken", broken=[1, 2])
    loader = train_loader(
        data_cfg(pattern, shuffle_buffer=0, max_failure_fraction=0.01), mask_cfg("none"), 2, 0, 1, seed=0
    )
    with pytest.raises(TooManyFailures, match=r"2 of \d+ samples failed.*allowed failure fraction 0.01"):
        list(loader)


def test_too_few_shards_is_an_error_naming_the_numbers(uneven_shards):
    with pytest.raises(ValueError, match=r"9 non-empty shards, fewer than ranks × loader workers = 2 × 5 = 10"):
        train_loader(data_cfg(uneven_shards, num_workers=5), mask_cfg("none"), 2, 0, 2, seed=0)


def test_missing_manifest_and_unknown_shard_are_clear_errors(tmp_path, uneven_shards):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train_loader(data_cfg(str(tmp_path / "x-{000..001}.tar")), mask_cfg("none"), 2, 0, 1, seed=0)
    extra = uneven_shards.replace("000008}", "000009}")
    with pytest.raises(ValueError, match="demo-000009.tar' is not listed in manifest"):
        train_loader(data_cfg(extra), mask_cfg("none"), 2, 0, 1, seed=0)


def test_split_folder_stands_for_every_shard_of_its_manifest(uneven_shards):
    folder = str(Path(uneven_shards).parent)
    from_folder = train_loader(data_cfg(folder), mask_cfg("none"), 2, 0, 1, seed=3)
    from_pattern = train_loader(data_cfg(uneven_shards), mask_cfg("none"), 2, 0, 1, seed=3)
    assert len(from_folder) == len(from_pattern)
    assert [b["key"] for b in from_folder] == [b["key"] for b in from_pattern]


def test_iterating_leaves_the_global_torch_rng_alone(uneven_shards):
    """The training process's drop-path stream must not depend on whether an epoch started fresh or resumed."""
    loader = train_loader(data_cfg(uneven_shards, num_workers=1), mask_cfg("none"), 2, 0, 1, seed=0)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)
