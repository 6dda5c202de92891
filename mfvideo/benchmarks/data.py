"""`tools/benchmark.py data`: worker CPU time per 16×4 clip from 320p H.264, before and after, side by side.

Synthetic camera-like videos (426×320, 30 fps, one keyframe per second, a panning noise texture with grain) are
encoded twice with the shard writer's encoder: as `make_shards` wrote them before (x264 veryfast's adaptive B-frames
with B-pyramid) and as it writes them now (three non-reference B-frames between reference frames). For 16×4 clips
at 224, each measured as CPU time of the process doing the work (what one worker core delivers):

(a) decode only: the frames of each video's first training clip from the sample's bytes, by every decoder on both
    encodings: decord's `get_batch` (the loader's decoder before; each decord build in a child process of its own,
    since decord and decord2 share the import name) and the loader's `VideoMedia` now (PyAV, unrequested
    non-reference frames skipped); the frames of all decoders are compared bit for bit;
(b) the full training pipeline with one worker process (tar reading, shuffle buffer, decode, random resized crop,
    flip, cube masks, batching, hand-over): before (decord, shards as written before) and now;
(c) now with repeated sampling ×2 and ×4 (k clips per decoded video).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from mfvideo.benchmarks.report import write_section
from mfvideo.config.schema import DataConfig, MaskConfig

TARGET_GPU_CLIPS_PER_S = 600
WIDTH, HEIGHT, FPS = 426, 320, 30
NUM_FRAMES, SAMPLING_RATE = 16, 4
ENCODINGS = {
    "before": "shards as written before (x264 adaptive B-frames, B-pyramid)",
    "now": "shards as written now (3 non-reference B-frames)",
}
# make_shards' x264 parameters before it fixed the frame types (its keyframe settings at 30 fps, mb-tree off).
ADAPTIVE_B_FRAMES_PARAMS = "keyint=30:min-keyint=30:scenecut=0:mbtree=0"
BEFORE = "(b) before: decord, shards as written before"
NOW = "(b) now: PyAV `VideoMedia`, shards as written now"


def _textured_frames(rng: np.random.Generator, frames: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Camera-like footage: a panning smooth-noise texture with sensor grain, so the encoder spends bits like on
    real video (flat synthetic scenes decode several times faster)."""
    side = 2 * max(width, height)
    coarse = rng.uniform(0, 255, (-(-side // 8), -(-side // 8), 3)).astype(np.float32)
    texture = np.kron(coarse, np.ones((8, 8, 1), np.float32))[:side, :side]
    texture += rng.normal(0, 25, texture.shape).astype(np.float32)
    velocity = rng.uniform(-3, 3, 2)
    for index in range(frames):
        y, x = (np.array([side // 4, side // 4]) + velocity * index).astype(int) % (side - height, side - width)
        frame = texture[y : y + height, x : x + width].copy()
        frame += rng.normal(0, 6, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _encode(frames: list[np.ndarray], encoding: str) -> bytes:
    """H.264 MP4 by the shard writer's encoder, with its x264 parameters of `encoding` (ENCODINGS)."""
    import av

    from mfvideo.shards.encode import H264Writer

    writer = H264Writer(FPS, WIDTH, HEIGHT)
    if encoding == "before":
        writer.stream.options = {**writer.stream.options, "x264-params": ADAPTIVE_B_FRAMES_PARAMS}
    for frame in frames:
        writer.add(av.VideoFrame.from_ndarray(frame, format="rgb24"))
    return writer.finish()[0]


@dataclass(frozen=True)
class _FilesSource:
    """`make_shards` source over videos already on disk (copied into the shards as they are)."""

    paths: tuple[str, ...]
    name = "bench"

    def list_items(self):
        from mfvideo.shards import Item, ItemList

        return ItemList(
            [Item(id=Path(p).stem, kind="video", label=0, label_name="synthetic", path=p) for p in self.paths],
            classes=["synthetic"],
        )


def make_benchmark_videos(directory: Path, num_videos: int, seconds: float, seed: int) -> dict[str, list[bytes]]:
    """The same synthetic videos in both encodings, each also written to shards of two videos (directory/<encoding>)."""
    from mfvideo.shards import ShardOptions, make_shards

    rng = np.random.default_rng(seed)
    videos: dict[str, list[bytes]] = {encoding: [] for encoding in ENCODINGS}
    for index in range(num_videos):
        frames = list(_textured_frames(rng, int(round(FPS * seconds)), WIDTH, HEIGHT))
        for encoding in ENCODINGS:
            videos[encoding].append(_encode(frames, encoding))
    for encoding, datas in videos.items():
        sources = directory / f"{encoding}-sources"
        sources.mkdir(parents=True)
        paths = []
        for index, data in enumerate(datas):
            paths.append(str(sources / f"video{index:03d}.mp4"))
            Path(paths[-1]).write_bytes(data)
        make_shards(_FilesSource(tuple(paths)), ShardOptions(out=directory / encoding, max_count=2, progress=False))
    return videos


def shard_pattern(directory: Path, encoding: str, num_videos: int) -> str:
    return str(directory / encoding / f"{encoding}-{{000000..{(num_videos + 1) // 2 - 1:06d}}}.tar")


def first_clips(num_videos: int, seconds: float, seed: int) -> list[list[int]]:
    """Frame indices of each video's first training clip (the pipeline's per-video generator, epoch 0)."""
    from mfvideo.data import sampling

    stride = sampling.clip_stride(SAMPLING_RATE, FPS, FPS)
    return [
        sampling.random_clip(
            int(round(FPS * seconds)), NUM_FRAMES, stride, np.random.default_rng([seed, 0, index, 0])
        ).tolist()
        for index in range(num_videos)
    ]


# --------------------------------------------------------------------------------------------------- (a) decode only


@dataclass(frozen=True)
class DecodeRun:
    decoder: str  # distribution and version, e.g. "decord 0.6.0"
    cpu_seconds: float  # over all clips
    frames_digest: str  # sha256 of every clip's frames, to compare decoders
    frames_decoded: float  # per clip, where the decoder reports it (VideoMedia), else nan


def _digest(digest, frames: np.ndarray) -> None:
    digest.update(np.ascontiguousarray(frames).tobytes())


def decode_with_video_media(videos: list[bytes], clips: list[list[int]]) -> DecodeRun:
    from mfvideo.data.decode import PyAVMedia

    digest, decoded, cpu = hashlib.sha256(), 0, 0.0
    for data, clip in zip(videos, clips):
        start = time.process_time()
        media = PyAVMedia(data)
        frames = media.frames(np.array(clip))
        cpu += time.process_time() - start
        decoded += media.frames_decoded
        _digest(digest, frames.numpy())
    return DecodeRun("PyAV " + _version("av"), cpu, digest.hexdigest(), decoded / len(clips))


def _version(distribution: str) -> str:
    from importlib import metadata

    return metadata.version(distribution)


def _decord_distribution() -> str:
    from importlib import metadata

    name = metadata.packages_distributions()["decord"][0]
    return f"{name} {metadata.version(name)}"


def decode_with_decord_here(payload: Path) -> None:
    """Child process: decord's `get_batch` for every (video, clip) in the pickled payload; a DecodeRun as JSON on
    stdout. Run with a decord build first on sys.path (PYTHONPATH) to measure that build."""
    import decord
    from torch.utils.dlpack import from_dlpack

    videos, clips = pickle.loads(payload.read_bytes())
    digest, cpu = hashlib.sha256(), 0.0
    for data, clip in zip(videos, clips):
        start = time.process_time()
        # As the loader took them: decord's buffer handed to torch through DLPack, without a copy.
        frames = from_dlpack(decord.VideoReader(io.BytesIO(data), num_threads=1).get_batch(clip).to_dlpack())
        cpu += time.process_time() - start
        _digest(digest, frames.numpy())
    print(json.dumps(DecodeRun(_decord_distribution(), cpu, digest.hexdigest(), float("nan")).__dict__))


def decode_with_decord(site: Optional[str], payload: Path) -> Optional[DecodeRun]:
    """decord's get_batch in a child process, with `site` (a folder holding a decord build, e.g. from
    `pip install --target DIR decord2`) first on its path, or the environment's decord; None if there is none."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if site:
        env["PYTHONPATH"] = os.pathsep.join([site, *filter(None, [env.get("PYTHONPATH")])])
    code = (
        "import sys; from pathlib import Path; from mfvideo.benchmarks.data import decode_with_decord_here; "
        "decode_with_decord_here(Path(sys.argv[1]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(payload)], env=env, capture_output=True, text=True)
    if proc.returncode:
        if site is None and "No module named 'decord'" in proc.stderr:
            return None
        raise RuntimeError(f"decord child ({site or 'environment'}) failed:\n{proc.stderr[-2000:]}")
    return DecodeRun(**json.loads(proc.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------------- (b), (c) pipeline


class DecordMedia:
    """The loader's decoder before: decord from bytes, one reader per sample, `num_threads=1`, one `get_batch` of
    the clip's frames handed to torch through DLPack (what `mfvideo.data.decode.VideoMedia` was)."""

    def __init__(self, data: bytes, recorded_num_frames: int = 0):
        import decord

        self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        counted = len(self._reader)
        self.num_frames = min(counted, recorded_num_frames) if recorded_num_frames > 0 else counted
        self.fps = float(self._reader.get_avg_fps())

    def frames(self, indices: np.ndarray) -> torch.Tensor:
        from torch.utils.dlpack import from_dlpack

        safe = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        return from_dlpack(self._reader.get_batch(safe.tolist()).to_dlpack())


def _open_with_decord(data: bytes, extension: str, recorded_num_frames: int = 0) -> DecordMedia:
    return DecordMedia(data, recorded_num_frames)


@dataclass(frozen=True)
class Rate:
    clips: int
    cpu_seconds: float  # of the loader worker
    wall_seconds: float

    @property
    def cpu_ms_per_clip(self) -> float:
        return 1e3 * self.cpu_seconds / self.clips

    @property
    def per_cpu_second(self) -> float:
        return self.clips / self.cpu_seconds


def _data_cfg(pattern: str, repeats: int) -> DataConfig:
    return OmegaConf.structured(
        DataConfig(
            train=pattern,
            num_frames=NUM_FRAMES,
            sampling_rate=SAMPLING_RATE,
            crop_size=224,
            repeated_sampling=repeats,
            num_workers=1,
            shuffle_buffer=4,
        )
    )


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pipeline_rate(pattern: str, repeats: int, seed: int, batch_size: int, with_decord: bool) -> tuple[Rate, float]:
    """One epoch of the training loader with one worker process, in steady state: the worker's CPU time and the
    wall time between the arrival of the first batch and of the third-to-last (start-up and the idle tail
    excluded; the worker keeps two batches in flight throughout). `with_decord`: the worker decodes with
    `DecordMedia` (patched in before the worker forks). Also the CPU milliseconds per clip of the host-side
    normalisation (what the training process pays when there is no GPU to do it)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from mfvideo.data import stream
    from mfvideo.data.loader import build_train_loader
    from mfvideo.data.stream import Placement
    from mfvideo.data.transforms import Normalise
    from mfvideo.tasks import pretrain

    open_media = stream.open_media
    if with_decord:
        stream.open_media = _open_with_decord
    try:
        data = _data_cfg(pattern, repeats)
        batching = pretrain.train_batching(SimpleNamespace(data=data, mask=OmegaConf.structured(MaskConfig())))
        loader = build_train_loader(data, batching, batch_size, Placement(num_workers=data.num_workers), seed)
        raw = StatefulDataLoader.__iter__(loader)  # the workers' uint8 batches, before normalisation
        arrivals = []
        for batch in raw:
            arrivals.append((batch["video"].shape[0], _process_cpu_seconds(raw._workers[0].pid), time.perf_counter()))
            last = batch["video"]
    finally:
        stream.open_media = open_media
    if len(arrivals) < 6:
        raise ValueError(f"only {len(arrivals)} batches: use more --videos for a steady-state measurement")
    clips = sum(size for size, _, _ in arrivals[1:-2])
    rate = Rate(clips, arrivals[-3][1] - arrivals[0][1], arrivals[-3][2] - arrivals[0][2])
    cpu = time.process_time()
    Normalise(data.mean, data.std)(last)
    return rate, (time.process_time() - cpu) * 1000 / last.shape[0]


# --------------------------------------------------------------------------------------------------- report


def _keep_fastest(runs: dict, key, run) -> None:
    """Keep the run of `key` with the least CPU time per clip (DecodeRun and Rate alike)."""
    cost = (lambda r: r.cpu_seconds) if isinstance(run, DecodeRun) else (lambda r: r.cpu_seconds / r.clips)
    if run is not None and (key not in runs or cost(run) < cost(runs[key])):
        runs[key] = run


def _cores(clips_per_core_second: float) -> int:
    return int(np.ceil(TARGET_GPU_CLIPS_PER_S / clips_per_core_second))


def run(args: argparse.Namespace) -> None:
    """args: videos, seconds, seed, rounds, decord_site (extra decord builds to compare)."""
    load_before = os.getloadavg()[0]
    clips = first_clips(args.videos, args.seconds, args.seed)
    decode: dict[tuple[str, str], DecodeRun] = {}
    pipeline: dict[str, Rate] = {}
    normalise_ms = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = make_benchmark_videos(root, args.videos, args.seconds, args.seed)
        payloads = {}
        for encoding, datas in videos.items():
            payloads[encoding] = root / f"{encoding}.pickle"
            payloads[encoding].write_bytes(pickle.dumps((datas, clips)))
        # Interleaved rounds, best of each: other load on the machine slows single runs, never speeds them up.
        for _ in range(args.rounds):
            for encoding in ENCODINGS:
                for site in [None, *args.decord_site]:
                    _keep_fastest(decode, (f"decord:{site}", encoding), decode_with_decord(site, payloads[encoding]))
                _keep_fastest(decode, ("VideoMedia", encoding), decode_with_video_media(videos[encoding], clips))
            if decode.get(("decord:None", "before")) is not None:
                rate, _ = pipeline_rate(shard_pattern(root, "before", args.videos), 1, args.seed, 4, True)
                _keep_fastest(pipeline, BEFORE, rate)
            for repeats in (1, 2, 4):
                rate, host_ms = pipeline_rate(shard_pattern(root, "now", args.videos), repeats, args.seed, 4, False)
                _keep_fastest(pipeline, NOW if repeats == 1 else f"(c) now, repeated sampling ×{repeats}", rate)
                normalise_ms = min(normalise_ms, host_ms)
    body = _report(args, decode, pipeline, normalise_ms, load_before)
    write_section("data", body)
    print(body)


def _report(args, decode, pipeline, normalise_ms, load_before) -> str:
    n = args.videos
    decoders = sorted({key for key, _ in decode}, key=lambda k: (k == "VideoMedia", k))
    rows = []
    for key in decoders:
        runs = [decode.get((key, encoding)) for encoding in ENCODINGS]
        name = next(run.decoder for run in runs if run)
        label = (
            f"{name} `VideoMedia` (unrequested non-reference frames skipped)"
            if key == "VideoMedia"
            else f"{name} `get_batch`"
        )
        rows.append(f"| {label} | " + " | ".join(f"{1e3 * run.cpu_seconds / n:.1f}" for run in runs) + " |")
    identical = all(
        len({run.frames_digest for (_, other), run in decode.items() if other == encoding}) == 1
        for encoding in ENCODINGS
    )
    video_media = {encoding: decode[("VideoMedia", encoding)] for encoding in ENCODINGS}
    decord_before = decode.get(("decord:None", "before"))
    lines = [
        f"{n} synthetic videos (panning noise texture with grain, {WIDTH}×{HEIGHT} H.264 from the shard writer's "
        f"encoder, {FPS} fps, {args.seconds:g} s, one keyframe per second) in tar shards of 2, encoded both ways; "
        f"16×4 clips at 224, cube masks 8×7×7, micro-batch 4; best of {args.rounds} interleaved rounds. Times are "
        "CPU time of the process doing the work (the decoder's process for (a), the loader worker in steady state "
        "for (b), (c)), i.e. what one worker core delivers.",
        "",
        "(a) Decode only, CPU ms per clip (the frames of each video's first training clip, from the sample's bytes):",
        "",
        "| decoder | " + " | ".join(ENCODINGS.values()) + " |",
        "|---|---|---|",
        *rows,
        "",
        f"Frames: every decoder returned the same frames, bit for bit: {'yes' if identical else 'NO'}. "
        f"`VideoMedia` had the decoder produce {video_media['before'].frames_decoded:.1f} frames per 16-frame clip "
        f"on the shards as written before and {video_media['now'].frames_decoded:.1f} on those written now.",
    ]
    if decord_before is not None:
        ratio = decord_before.cpu_seconds / video_media["now"].cpu_seconds
        lines.append(
            f"Decode: {ratio:.2f}× fewer CPU seconds per clip now ({decord_before.decoder} on the shards "
            "as written before → `VideoMedia` on the shards as written now)."
        )
    if args.decord_site:
        lines.append(
            "decord builds other than the environment's were installed with `pip install --no-deps --target "
            "DIR <name>` and measured from DIR (`--decord-site DIR`)."
        )
    lines += [
        "",
        "(b), (c) Training pipeline, one worker process:",
        "",
        "| measurement | worker CPU ms per clip | clips/s per worker core | clips |",
        "|---|---|---|---|",
    ]
    for name, rate in pipeline.items():
        lines.append(f"| {name} | {rate.cpu_ms_per_clip:.1f} | {rate.per_cpu_second:.1f} | {rate.clips} |")
    now = pipeline[NOW].per_cpu_second
    repeated4 = pipeline["(c) now, repeated sampling ×4"].per_cpu_second
    before = pipeline.get(BEFORE)
    lines.append("")
    if before is not None:
        ratio = now / before.per_cpu_second
        lines.append(
            f"Worker CPU seconds per clip: {ratio:.2f}× fewer now than before (target ≥ 1.5: "
            f"{'met' if ratio >= 1.5 else 'NOT met'})."
        )
    else:
        lines.append("decord is not installed: no before figures (`pip install decord==0.6.0` to measure them).")
    lines += [
        "",
        f"Feeding one GPU at {TARGET_GPU_CLIPS_PER_S} clips/s takes about {_cores(now)} worker cores now without "
        f"repeated sampling and {_cores(repeated4)} with ×4"
        + (f" (before: {_cores(before.per_cpu_second)} without)" if before is not None else "")
        + ", one core per worker (`data.num_workers`), plus the training process itself. Workers hand over uint8; "
        f"normalising to float32 on the host (no GPU) costs the training process {normalise_ms:.1f} ms per clip, "
        "on a GPU it runs on the device.",
        "",
        f"CPU load average (1 min) at start / end of the run: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (other jobs share the machine: CPU times are best-of-N and still vary).",
    ]
    return "\n".join(lines)
