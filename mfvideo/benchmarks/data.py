"""`tools/benchmark.py data`: clips/s of one loader worker process against the decode bound, side by side.

Synthetic 320p H.264 videos (426×320, 30 fps, one keyframe per second, textured like camera footage) are written to
temporary shards with `make_shards`. For 16×4 clips at 224:
(a) decode bound: decord on local files, one reader per video with `num_threads=1`, `get_batch` of exactly the
    frame indices the pipeline's first clip of that video uses, handed to torch without a copy — nothing else;
(b) the full training pipeline with one worker process (tar reading, shuffle buffer, decode from bytes, random
    resized crop, flip, normalisation, cube masks, batching, hand-over to the main process);
(c) the same with repeated sampling ×2 and ×4 (clips per second, k clips per decoded video).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from mfvideo.benchmarks.report import write_section
from mfvideo.config.schema import DataConfig, MaskConfig

TARGET_GPU_CLIPS_PER_S = 600


def _textured_frames(rng: np.random.Generator, frames: int, width: int, height: int):
    """Camera-like footage: a panning, slowly zooming smooth-noise texture with moving blobs and sensor grain, so
    the encoder spends bits like on real video (flat synthetic scenes decode several times faster)."""
    side = 2 * max(width, height)
    coarse = rng.uniform(0, 255, (side // 8, side // 8, 3)).astype(np.float32)
    texture = np.kron(coarse, np.ones((8, 8, 1), np.float32))
    texture += rng.normal(0, 25, texture.shape).astype(np.float32)
    velocity = rng.uniform(-3, 3, 2)
    for index in range(frames):
        y, x = (np.array([side // 4, side // 4]) + velocity * index).astype(int) % (side - height, side - width)
        frame = texture[y:y + height, x:x + width].copy()
        frame += rng.normal(0, 6, frame.shape).astype(np.float32)
        yield np.clip(frame, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _FilesSource:
    """`make_shards` source over videos already on disk."""

    paths: tuple[str, ...]
    name = "bench"

    def list_items(self):
        from mfvideo.shards import Item, ItemList

        return ItemList([Item(id=Path(p).stem, kind="video", label=0, label_name="synthetic", path=p)
                         for p in self.paths], classes=["synthetic"])


def make_benchmark_shards(directory: Path, num_videos: int, seconds: float, seed: int = 0) -> str:
    """`num_videos` synthetic 426×320 30 fps H.264 videos (the shard writer's encoder: one keyframe per second),
    written to shards of two videos by `make_shards`."""
    from mfvideo.shards import ShardOptions, make_shards
    from mfvideo.shards.encode import encode_rgb_frames

    sources = directory / "sources"
    sources.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(num_videos):
        data, _ = encode_rgb_frames(_textured_frames(rng, int(round(30 * seconds)), 426, 320), 30)
        path = sources / f"video{index:03d}.mp4"
        path.write_bytes(data)
        paths.append(str(path))
    make_shards(_FilesSource(tuple(paths)), ShardOptions(out=directory / "bench", max_count=2, progress=False))
    return str(directory / "bench" / f"bench-{{000000..{(num_videos + 1) // 2 - 1:06d}}}.tar")


def _data_cfg(pattern: str, repeats: int) -> DataConfig:
    return OmegaConf.structured(DataConfig(train=pattern, num_frames=16, sampling_rate=4, crop_size=224,
                                           repeated_sampling=repeats, num_workers=1, shuffle_buffer=4))


@dataclass(frozen=True)
class Rate:
    clips: int
    cpu_seconds: float   # of the process doing the work (the loader worker for the pipeline)
    wall_seconds: float

    @property
    def per_cpu_second(self) -> float:
        return self.clips / self.cpu_seconds

    @property
    def per_wall_second(self) -> float:
        return self.clips / self.wall_seconds


def decode_bound(pattern: str, directory: Path, seed: int) -> Rate:
    """Plain decord on extracted files, at the indices the pipeline's first clip of each video draws."""
    import decord
    from torch.utils.dlpack import from_dlpack

    from mfvideo.data import sampling
    from mfvideo.data.shardlist import list_shards
    from mfvideo.data.tarstream import iter_shard

    jobs = []
    for shard in list_shards(pattern):
        for member, (key, parts) in enumerate(iter_shard(shard.url)):
            path = directory / f"{key}.mp4"
            path.write_bytes(parts["mp4"])
            jobs.append((path, shard.first_index + member))
    wall, cpu = time.perf_counter(), time.process_time()
    for path, index in jobs:
        reader = decord.VideoReader(str(path), num_threads=1)
        stride = sampling.clip_stride(4, reader.get_avg_fps(), 30.0)
        # The pipeline's per-video generator (epoch 0, first cycle); its first draw is the first clip's start.
        indices = sampling.random_clip(len(reader), 16, stride, np.random.default_rng([seed, 0, index, 0]))
        from_dlpack(reader.get_batch(indices.tolist()).to_dlpack())  # frames out as the pipeline takes them
        del reader
    return Rate(len(jobs), time.process_time() - cpu, time.perf_counter() - wall)


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pipeline_rate(pattern: str, repeats: int, seed: int, batch_size: int) -> tuple[Rate, float]:
    """One epoch of the training loader with one worker process, in steady state: the worker's CPU time and the
    wall time between the arrival of the first batch and of the third-to-last (start-up and the idle tail
    excluded; the worker keeps two batches in flight throughout). Also the CPU milliseconds per clip of the
    host-side normalisation (what the training process pays when there is no GPU to do it)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from mfvideo.data.loader import build_train_loader

    loader = build_train_loader(_data_cfg(pattern, repeats), OmegaConf.structured(MaskConfig()), batch_size, 0, 1,
                                seed, fields=("mask",))
    raw = StatefulDataLoader.__iter__(loader)  # the workers' uint8 batches, before normalisation
    arrivals = []
    for batch in raw:
        arrivals.append((batch["video"].shape[0], _process_cpu_seconds(raw._workers[0].pid), time.perf_counter()))
        last = batch["video"]
    if len(arrivals) < 6:
        raise ValueError(f"only {len(arrivals)} batches: use more --videos for a steady-state measurement")
    clips = sum(size for size, _, _ in arrivals[1:-2])
    rate = Rate(clips, arrivals[-3][1] - arrivals[0][1], arrivals[-3][2] - arrivals[0][2])
    cpu = time.process_time()
    loader.normalise(last)
    return rate, (time.process_time() - cpu) * 1000 / last.shape[0]


def run(args: argparse.Namespace) -> None:
    conditions = ["(a) decode bound: decord on local files", "(b) full pipeline, 1 worker",
                  "(c) repeated sampling ×2", "(c) repeated sampling ×4"]
    best: dict[str, Rate] = {}
    normalise_ms = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pattern = make_benchmark_shards(root / "shards", args.videos, args.seconds, args.seed)
        (root / "files").mkdir()
        # Interleaved rounds, best of each: other load on the machine slows single runs, never speeds them up.
        for _ in range(args.rounds):
            rates = [decode_bound(pattern, root / "files", args.seed)]
            for repeats in (1, 2, 4):
                rate, host_ms = pipeline_rate(pattern, repeats, args.seed, batch_size=4)
                rates.append(rate)
                normalise_ms = min(normalise_ms, host_ms)
            for name, rate in zip(conditions, rates):
                if name not in best or rate.per_cpu_second > best[name].per_cpu_second:
                    best[name] = rate
    decode, single, repeated4 = (best[conditions[i]].per_cpu_second for i in (0, 1, 3))
    table = ["| measurement | clips/s per worker core (CPU time) | clips/s (wall) | clips | vs (a) | vs (b) |",
             "|---|---|---|---|---|---|"]
    for name in conditions:
        rate = best[name]
        table.append(f"| {name} | {rate.per_cpu_second:.1f} | {rate.per_wall_second:.1f} | {rate.clips} | "
                     f"{rate.per_cpu_second / decode:.2f} | {rate.per_cpu_second / single:.2f} |")
    body = (f"{args.videos} synthetic videos (panning noise texture with grain, 426×320 H.264 from the shard writer's "
            f"encoder, 30 fps, {args.seconds:g} s, keyframe every second) in tar shards of 2; 16×4 clips at 224, cube masks 8×7×7, micro-batch 4, one worker process; "
            f"best of {args.rounds} interleaved rounds. Rates are clips per CPU second of the process doing the "
            f"work (decord's own process for (a), the loader worker in steady state for (b), (c)), which is what "
            f"one core delivers; wall-clock rates are shown too but depend on other load on the machine.\n\n"
            + "\n".join(table)
            + f"\n\nTargets: (b)/(a) = {single / decode:.2f} (≥ 0.8), ×4 / (b) = {repeated4 / single:.2f} (≥ 2.5).\n\n"
            f"Feeding one GPU at {TARGET_GPU_CLIPS_PER_S} clips/s takes about "
            f"{int(np.ceil(TARGET_GPU_CLIPS_PER_S / single))} worker cores without repeated sampling and "
            f"{int(np.ceil(TARGET_GPU_CLIPS_PER_S / repeated4))} with ×4 (one core per worker, `data.num_workers`), "
            f"plus the training process itself. Workers hand over uint8; normalising to float32 on the host (no GPU) "
            f"costs the training process {normalise_ms:.1f} ms per clip, on a GPU it runs on the device.")
    write_section("data", body)
    print(body)
