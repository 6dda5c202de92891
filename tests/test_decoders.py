"""The three decoders behind `data.decoder` (pyav, decord, torchcodec): the same frames, bit for bit, on shards written
by make_shards and on shards holding copied sources (x264 with B-pyramids, VP9 WebM, MPEG-4); the same batches from
the training loader; bad samples skipped like any corrupt video; a decoder that cannot run here refused before any
work, naming the key and what to install. The NVDEC comparison runs on a GPU only (marker `gpu`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mfvideo.config.schema import DataConfig, MaskConfig
from mfvideo.data.decode import DECODERS, DecodeError, DecoderUnavailable, check_decoder, open_media
from mfvideo.data.loader import build_train_loader
from mfvideo.data.stream import Placement
from mfvideo.data.tarstream import iter_shard
from mfvideo.shards import Item, ItemList, ShardOptions, make_shards


def _available(decoder: str) -> bool:
    try:
        check_decoder(decoder)
    except DecoderUnavailable:
        return False
    return True


UNAVAILABLE = [d for d in DECODERS if not _available(d)]


def _nvdec_unavailable() -> str:
    """Why NVDEC through torchcodec cannot run here ("" where it can)."""
    try:
        check_decoder("torchcodec", "cuda")
    except DecoderUnavailable as err:
        return str(err)
    return ""


NVDEC_UNAVAILABLE = _nvdec_unavailable() if torch.cuda.is_available() else "NVDEC needs a CUDA device"
# tools/dev.sh installs all three; where it could not (no FFmpeg libraries for torchcodec), say so and compare the rest.
needs_all = pytest.mark.skipif(bool(UNAVAILABLE), reason=f"decoders not importable here: {UNAVAILABLE}")

# (file suffix, codec, encoder options): the kinds of source a shard can hold unchanged.
SOURCE_KINDS = {
    "x264-bpyramid": (".mp4", "libx264", {"x264-params": "bframes=3:b-pyramid=normal:b-adapt=2:keyint=24"}),
    "vp9": (".webm", "libvpx-vp9", {"g": "24"}),
    "mpeg4": (".mp4", "mpeg4", {"g": "24", "bf": "2"}),
}


def _write_source(path: Path, codec: str, options: dict, width: int, height: int, num_frames: int, seed: int):
    """Moving noise with a drifting gradient: every frame differs, so a wrong frame cannot pass as the right one."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, 2 * width, 3), dtype=np.uint8)
    ramp = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = options
        for index in range(num_frames):
            picture = np.roll(base, 3 * index, axis=1)[:, :width].astype(np.float32) * 0.7 + ramp + index
            frame = av.VideoFrame.from_ndarray(np.clip(picture, 0, 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, 30)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@dataclass(frozen=True)
class _Files:
    paths: tuple[str, ...]
    name = "decoders"

    def list_items(self) -> ItemList:
        items = [Item(id=Path(p).stem, kind="video", label=0, label_name="moving", path=p) for p in self.paths]
        return ItemList(items, classes=["moving"])


@pytest.fixture(scope="module")
def shard_kinds(tmp_path_factory) -> dict[str, Path]:
    """Shard folders: one per copied source kind, and `make_shards` (the same videos re-encoded by make_shards).
    Widths 96 and 160: decord2 3.4.0 breaks at 96 (why the project installs decord 0.6.0)."""
    root = tmp_path_factory.mktemp("decoders")
    folders, all_paths = {}, []
    for kind, (suffix, codec, options) in SOURCE_KINDS.items():
        paths = []
        for index, (width, height) in enumerate([(96, 72), (160, 120)]):
            path = root / "sources" / f"{kind}-{index}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_source(path, codec, options, width, height, 40 + 7 * index, seed=index)
            paths.append(str(path))
        folders[kind] = root / kind
        make_shards(_Files(tuple(paths)), ShardOptions(out=folders[kind], max_count=1, progress=False))
        all_paths += paths
    folders["make_shards"] = root / "make_shards"
    make_shards(_Files(tuple(all_paths)), ShardOptions(out=folders["make_shards"], max_count=2, short_side=72))
    return folders


def _samples(folder: Path) -> list[tuple[str, str, bytes, int]]:
    out = []
    for url in sorted(folder.glob("*.tar")):
        for key, parts in iter_shard(str(url)):
            extension = "webm" if "webm" in parts else "mp4"
            out.append((key, extension, parts[extension], json.loads(parts["json"])["num_frames"]))
    assert out, folder
    return out


@needs_all
@pytest.mark.parametrize("kind", [*SOURCE_KINDS, "make_shards"])
def test_every_decoder_returns_the_same_frames_bit_for_bit(shard_kinds, kind):
    """Clips as the loader asks for them (ascending, with a stride), a union of overlapping clips, unsorted indices
    with repeats, and indices past the end (clamped to the last frame), from the shard's bytes."""
    for key, extension, data, recorded in _samples(shard_kinds[kind]):
        if kind == "mpeg4":  # decord seeks wrongly in MPEG-4 Part 2 with B-frames and refuses it (DecordMedia)
            with pytest.raises(DecodeError, match="MPEG-4 Part 2 video with B-frames"):
                open_media(data, extension, recorded, "decord")
        decoders = [d for d in DECODERS if not (kind == "mpeg4" and d == "decord")]
        opened = {decoder: open_media(data, extension, recorded, decoder) for decoder in decoders}
        counts = {decoder: media.num_frames for decoder, media in opened.items()}
        assert len(set(counts.values())) == 1 and counts["pyav"] == recorded, (kind, key, counts)
        rates = {decoder: media.fps for decoder, media in opened.items()}
        assert max(rates.values()) - min(rates.values()) < 1e-6 and abs(rates["pyav"] - 30) < 1e-6, (kind, rates)
        n = counts["pyav"]
        requests = [
            np.arange(2, 2 + 4 * 8, 4) % n,
            np.union1d(np.arange(0, 16, 2), np.arange(5, 21, 2)),
            np.array([n - 1, 3, 3, 0, 17, 9, 9]),
            np.array([n - 2, n - 1, n, n + 5]),
        ]
        for indices in requests:
            frames = {decoder: media.frames(indices) for decoder, media in opened.items()}
            reference = frames["pyav"]
            assert reference.dtype == torch.uint8 and reference.shape[0] == len(indices) and reference.shape[-1] == 3
            for decoder, got in frames.items():
                assert torch.equal(got, reference), f"{decoder} differs from pyav on {kind} {key} at {indices}"
        # And the frames are the right ones: distinct frames differ (the content moves every frame).
        assert not torch.equal(reference[-2], reference[-4])


def _pretraining_batches(shard_kinds, decoder: str, decode_device: str = "cpu") -> list[dict]:
    """One epoch of the pretraining loader over the make_shards shards (4×2 clips at 64², ×2 repeated sampling)."""
    from mfvideo.tasks import pretrain

    data = OmegaConf.structured(
        DataConfig(
            train=str(shard_kinds["make_shards"]),
            num_frames=4,
            sampling_rate=2,
            crop_size=64,
            repeated_sampling=2,
            num_workers=0,
            shuffle_buffer=2,
            decoder=decoder,
            decode_device=decode_device,
        )
    )
    recipe = OmegaConf.create({"data": data, "mask": OmegaConf.structured(MaskConfig(min_units=1))})
    return list(build_train_loader(data, pretrain.train_batching(recipe), 2, Placement(), seed=3))


@needs_all
def test_the_training_loader_gives_the_same_batches_with_every_decoder(shard_kinds, monkeypatch):
    from mfvideo.data import decode

    opened = []
    for name, reader in decode._VIDEO_READERS.items():  # count which decoder the stream really opens videos with
        monkeypatch.setitem(
            decode._VIDEO_READERS, name, lambda *a, name=name, reader=reader: opened.append(name) or reader(*a)
        )

    reference = _pretraining_batches(shard_kinds, "pyav")
    assert len(reference) == 6 and set(opened) == {"pyav"}
    for decoder in DECODERS[1:]:
        opened.clear()
        got = _pretraining_batches(shard_kinds, decoder)
        assert set(opened) == {decoder}
        assert [b["key"] for b in got] == [b["key"] for b in reference]
        for ours, theirs in zip(got, reference):
            assert torch.equal(ours["video"], theirs["video"]) and torch.equal(ours["mask"], theirs["mask"]), decoder


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_sample_the_decoder_cannot_read_is_a_decode_error(shard_kinds, decoder):
    """What the stream skips and counts: garbage, and a video cut in half (its frames past the cut cannot decode)."""
    if decoder in UNAVAILABLE:
        pytest.skip(f"{decoder} not importable here")
    with pytest.raises(DecodeError):
        open_media(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, "mp4", 0, decoder)
    _, extension, data, recorded = _samples(shard_kinds["make_shards"])[0]
    with pytest.raises(DecodeError):
        media = open_media(data[: len(data) // 3], extension, recorded, decoder)
        media.frames(np.arange(recorded - 8, recorded))


def test_a_decoder_that_cannot_run_here_is_refused_naming_the_key_and_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)  # what `import decord` does where it is not installed
    with pytest.raises(DecoderUnavailable, match=r"data.decoder='decord' is not importable.*pip install decord"):
        check_decoder("decord")
    with pytest.raises(DecoderUnavailable, match=r"data.decoder='ffms2': must be one of"):
        check_decoder("ffms2")
    with pytest.raises(DecoderUnavailable, match=r"data.decode_device='cuda' needs data.decoder='torchcodec'"):
        check_decoder("pyav", "cuda")
    if not torch.cuda.is_available() and "torchcodec" not in UNAVAILABLE:
        with pytest.raises(DecoderUnavailable, match=r"data.decode_device='cuda': no CUDA device here"):
            check_decoder("torchcodec", "cuda")


def test_a_recipe_naming_a_decoder_that_cannot_run_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    from mfvideo.app.run import checked_recipe

    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(SystemExit) as exit_info:
        checked_recipe("recipes/demo_pt.yaml", ["data.decoder=decord", f"train.output_dir={tmp_path}/run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "data.decoder='decord' is not importable" in err and "pip install decord==0.6.0" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.gpu
@pytest.mark.skipif(bool(NVDEC_UNAVAILABLE), reason=NVDEC_UNAVAILABLE)
def test_nvdec_frames_match_the_cpu_frames_within_the_colour_conversion(shard_kinds):
    """NVDEC's frames against the CPU's for the same indices. The GPU converts YUV to RGB with its own kernel (its
    own rounding and chroma upsampling), so they differ: the mean and maximum absolute difference are printed (the
    figures to report), and the mean must stay under 3 of 255 (a wrong frame or colour matrix gives tens). These
    videos are per-pixel noise, the worst case for chroma upsampling, so the maximum is not bounded here."""
    from importlib.metadata import version as installed

    from mfvideo.data.decode import TorchCodecMedia

    version = installed("torchcodec")

    for key, extension, data, recorded in _samples(shard_kinds["make_shards"]):
        indices = np.arange(0, min(recorded, 32), 3)
        cpu = open_media(data, extension, recorded, "pyav").frames(indices).to(torch.int16)
        gpu_frames = TorchCodecMedia(data, recorded, "cuda").frames(indices)
        assert gpu_frames.is_cuda
        difference = (gpu_frames.cpu().to(torch.int16) - cpu).abs().float()
        print(f"{key}: NVDEC − CPU mean {difference.mean():.3f}, max {difference.max():.0f} (torchcodec {version})")
        assert difference.mean() < 3.0, key


@pytest.mark.gpu
@pytest.mark.skipif(bool(NVDEC_UNAVAILABLE), reason=NVDEC_UNAVAILABLE)
def test_the_loader_decoding_on_the_gpu_gives_the_workers_clips_within_the_colour_conversion(shard_kinds):
    """data.decode_device=cuda: the same clips (keys, masks) as decoding in the workers, pixels within NVDEC's colour
    conversion and the float resize (mean absolute difference under 3 of 255), every batch on the GPU."""
    on_gpu_batches = _pretraining_batches(shard_kinds, "torchcodec", "cuda")
    in_worker_batches = _pretraining_batches(shard_kinds, "torchcodec", "cpu")
    for on_gpu, in_workers in zip(on_gpu_batches, in_worker_batches, strict=True):
        assert on_gpu["key"] == in_workers["key"] and torch.equal(on_gpu["mask"].cpu(), in_workers["mask"].cpu())
        assert on_gpu["pixels"].is_cuda
        difference = (on_gpu["pixels"].to(torch.int16) - in_workers["pixels"].to(on_gpu["pixels"].device)).abs()
        assert difference.float().mean() < 3.0
