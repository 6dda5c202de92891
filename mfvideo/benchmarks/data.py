"""`tools/benchmark.py data`: worker CPU time per 16×4 clip from 320p H.264, per decoder, before and after, side by
side in one run.

Synthetic camera-like videos (426×320, 30 fps, one keyframe per second, a panning noise texture with grain) are
encoded twice by the shard writer's encoder: as `make_shards` re-encoded them before (CABAC) and as it does now
(CAVLC, `mfvideo.shards.encode`), both with three non-reference B-frames between reference frames. For 16×4 clips at
224, each measured as CPU time of the process doing the work (what one worker core delivers):

(a) decode only: the frames of each video's first training clip from the sample's bytes, by each decoder
    (`data.decoder`: pyav, decord, torchcodec; decord builds from `--decord-site` too, each decord in a child
    process of its own since decord and decord2 share the import name), the frames compared bit for bit;
(b) the training pipeline with one worker process (tar reading, shuffle buffer, decode, random resized crop, flip,
    cube masks, batching, hand-over), ×1 and ×4 repeated sampling: before (pyav on the shards as written before)
    and now with each decoder, and with decoding on the device (`data.decode_device`), where the worker only plans
    the clips (the device's decoding is not the worker's and is not counted).
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
from mfvideo.data.decode import DECODERS

TARGET_GPU_CLIPS_PER_S = 600
WIDTH, HEIGHT, FPS = 426, 320, 30
NUM_FRAMES, SAMPLING_RATE = 16, 4
ENCODINGS = {
    "before": "shards as make_shards wrote them before (CABAC)",
    "now": "shards as make_shards writes them now (CAVLC)",
}
DEFAULT_DECODER = DataConfig.decoder  # the schema default, which the (a) table must justify
REPEATS = (1, 4)
BEFORE = "before: pyav, shards as written before"
PLANNED = "now: decoding on the device (the worker plans the clips)"


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
    """H.264 MP4 by the shard writer's encoder, entropy-coded as `encoding` (ENCODINGS) says."""
    import av

    from mfvideo.shards.encode import H264Writer

    writer = H264Writer(FPS, WIDTH, HEIGHT, cabac=encoding == "before")
    for frame in frames:
        writer.add(av.VideoFrame.from_ndarray(frame, format="rgb24"))
    return writer.finish()[0]


@dataclass(frozen=True)
class BenchFiles:
    """`make_shards` source over videos already on disk (copied into the shards as they are)."""

    paths: tuple[str, ...]
    name = "bench"

    def list_items(self):
        from mfvideo.shards import Item, ItemList

        return ItemList(
            [Item(id=Path(p).stem, kind="video", label=0, label_name="synthetic", path=p) for p in self.paths],
            classes=["synthetic"],
        )


def make_benchmark_videos(
    directory: Path, num_videos: int, seconds: float, seed: int, encodings: tuple[str, ...] = tuple(ENCODINGS)
) -> dict[str, list[bytes]]:
    """The same synthetic videos in each of `encodings` (ENCODINGS), each also written to shards of two videos
    (directory/<encoding>)."""
    from mfvideo.shards import ShardOptions, make_shards

    rng = np.random.default_rng(seed)
    videos: dict[str, list[bytes]] = {encoding: [] for encoding in encodings}
    for index in range(num_videos):
        frames = list(_textured_frames(rng, int(round(FPS * seconds)), WIDTH, HEIGHT))
        for encoding in encodings:
            videos[encoding].append(_encode(frames, encoding))
    for encoding, datas in videos.items():
        sources = directory / f"{encoding}-sources"
        sources.mkdir(parents=True)
        paths = []
        for index, data in enumerate(datas):
            paths.append(str(sources / f"video{index:03d}.mp4"))
            Path(paths[-1]).write_bytes(data)
        make_shards(BenchFiles(tuple(paths)), ShardOptions(out=directory / encoding, max_count=2, progress=False))
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
    frames_decoded: float  # per clip, where the decoder reports it (pyav), else nan


def _digest(digest, frames: np.ndarray) -> None:
    digest.update(np.ascontiguousarray(frames).tobytes())


def decode_here(decoder: str, videos: list[bytes], clips: list[list[int]]) -> DecodeRun:
    """The first clip of every video by `decoder` (`mfvideo.data.decode`), from the bytes."""
    from mfvideo.data.decode import open_media

    digest, decoded, cpu = hashlib.sha256(), 0.0, 0.0
    for data, clip in zip(videos, clips):
        start = time.process_time()
        media = open_media(data, "mp4", 0, decoder)
        frames = media.frames(np.array(clip))
        cpu += time.process_time() - start
        decoded += getattr(media, "frames_decoded", float("nan"))
        _digest(digest, frames.numpy())
    name = {"pyav": "PyAV " + _version("av"), "decord": _decord_distribution(), "torchcodec": "torchcodec"}[decoder]
    if decoder == "torchcodec":
        name += " " + _version("torchcodec")
    return DecodeRun(name, cpu, digest.hexdigest(), decoded / len(clips))


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


def _data_cfg(pattern: str, repeats: int, decoder: str) -> DataConfig:
    return OmegaConf.structured(
        DataConfig(
            train=pattern,
            num_frames=NUM_FRAMES,
            sampling_rate=SAMPLING_RATE,
            crop_size=224,
            repeated_sampling=repeats,
            num_workers=1,
            shuffle_buffer=4,
            decoder=decoder,
        )
    )


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pipeline_rate(pattern: str, repeats: int, seed: int, batch_size: int, decoder: str, planned: bool) -> Rate:
    """One epoch of the training loader with one worker process, in steady state: the worker's CPU time and the
    wall time between the arrival of the first batch and of the third-to-last (start-up and the idle tail
    excluded; the worker keeps two batches in flight throughout). `planned`: the worker only plans the clips, as
    when the device decodes (their decoding, by the device step, is not timed: it is not the worker's)."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from mfvideo.data.decode import Decoding
    from mfvideo.data.loader import StreamLoader, read_policy
    from mfvideo.data.stream import ClipStream, Placement, ShardSplit, TrainOrder
    from mfvideo.tasks import pretrain

    data = _data_cfg(pattern, repeats, decoder)
    batching = pretrain.train_batching(SimpleNamespace(data=data, mask=OmegaConf.structured(MaskConfig())))
    decoding = Decoding("torchcodec", "cpu") if planned else Decoding(decoder)
    stream = ClipStream(
        ShardSplit(data.train, None, read_policy(data)),
        batching.clip_maker,
        batching.collate,
        batch_size,
        Placement(num_workers=data.num_workers),
        TrainOrder(seed, data.shuffle_buffer),
        0.0,
        decoding,
    )
    raw = StatefulDataLoader.__iter__(StreamLoader(stream, data.num_workers))  # the workers' batches as handed over
    arrivals = []
    for batch in raw:
        size = len(batch["key"])
        arrivals.append((size, _process_cpu_seconds(raw._workers[0].pid), time.perf_counter()))
    if len(arrivals) < 6:
        raise ValueError(f"only {len(arrivals)} batches: use more --videos for a steady-state measurement")
    clips = sum(size for size, _, _ in arrivals[1:-2])
    return Rate(clips, arrivals[-3][1] - arrivals[0][1], arrivals[-3][2] - arrivals[0][2])


def host_normalise_ms(batch_size: int) -> float:
    """CPU ms per clip of normalising a uint8 batch to float32 on the host (what the training process pays when
    there is no GPU to do it)."""
    from mfvideo.data.transforms import Normalise

    video = torch.randint(0, 256, (batch_size, 3, NUM_FRAMES, 224, 224), dtype=torch.uint8)
    normalise = Normalise([0.45] * 3, [0.225] * 3)
    best = float("inf")
    for _ in range(3):
        cpu = time.process_time()
        normalise(video)
        best = min(best, time.process_time() - cpu)
    return best * 1000 / batch_size


# --------------------------------------------------------------------------------------------------- report


def _keep_fastest(runs: dict, key, run) -> None:
    """Keep the run of `key` with the least CPU time per clip (DecodeRun and Rate alike)."""
    cost = (lambda r: r.cpu_seconds) if isinstance(run, DecodeRun) else (lambda r: r.cpu_seconds / r.clips)
    if run is not None and (key not in runs or cost(run) < cost(runs[key])):
        runs[key] = run


def _cores(clips_per_core_second: float) -> int:
    return int(np.ceil(TARGET_GPU_CLIPS_PER_S / clips_per_core_second))


def _available(decoder: str) -> bool:
    from mfvideo.data.decode import DecoderUnavailable, check_decoder

    try:
        check_decoder(decoder)
    except DecoderUnavailable as err:
        print(f"skipping {decoder}: {err}")
        return False
    return True


def run(args: argparse.Namespace) -> None:
    """args: videos, seconds, seed, rounds, decord_site (extra decord builds to compare)."""
    load_before = os.getloadavg()[0]
    clips = first_clips(args.videos, args.seconds, args.seed)
    decoders = [decoder for decoder in DECODERS if _available(decoder)]
    decode: dict[tuple[str, str], DecodeRun] = {}
    pipeline: dict[tuple[str, int], Rate] = {}
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
                for decoder in decoders:
                    _keep_fastest(decode, (decoder, encoding), decode_here(decoder, videos[encoding], clips))
                for site in args.decord_site:
                    _keep_fastest(decode, (f"decord:{site}", encoding), decode_with_decord(site, payloads[encoding]))
            before, now = (shard_pattern(root, encoding, args.videos) for encoding in ENCODINGS)
            for repeats in REPEATS:
                _keep_fastest(pipeline, (BEFORE, repeats), pipeline_rate(before, repeats, args.seed, 4, "pyav", False))
                for decoder in decoders:
                    rate = pipeline_rate(now, repeats, args.seed, 4, decoder, False)
                    _keep_fastest(pipeline, (f"now: {decoder}", repeats), rate)
                if "torchcodec" in decoders:
                    rate = pipeline_rate(now, repeats, args.seed, 4, "torchcodec", True)
                    _keep_fastest(pipeline, (PLANNED, repeats), rate)
    body = _report(args, decode, pipeline, host_normalise_ms(4), load_before)
    write_section("data", body)
    print(body)


def _report(args, decode, pipeline, normalise_ms, load_before) -> str:
    n = args.videos
    keys = list(dict.fromkeys(key for key, _ in decode))
    rows = []
    for key in keys:
        runs = [decode.get((key, encoding)) for encoding in ENCODINGS]
        name = next(run.decoder for run in runs if run)
        label = f"`{key}`: {name}" if key in DECODERS else f"{name} (from {key.split(':', 1)[1]})"
        cells = " | ".join(f"{1e3 * run.cpu_seconds / n:.1f}" if run else "–" for run in runs)
        rows.append(f"| {label} | {cells} |")
    identical = all(
        len({run.frames_digest for (_, other), run in decode.items() if other == encoding}) == 1
        for encoding in ENCODINGS
    )
    fastest = min((key for key in keys if key in DECODERS), key=lambda k: decode[(k, "now")].cpu_seconds)
    pyav = {encoding: decode[("pyav", encoding)] for encoding in ENCODINGS}
    lines = [
        f"{n} synthetic videos (panning noise texture with grain, {WIDTH}×{HEIGHT} H.264 from the shard writer's "
        f"encoder, {FPS} fps, {args.seconds:g} s, one keyframe per second, three non-reference B-frames between "
        f"reference frames) in tar shards of 2, encoded both ways; 16×4 clips at 224, cube masks 8×7×7, micro-batch "
        f"4; best of {args.rounds} interleaved rounds. Times are CPU time of the process doing the work (the decoder's "
        "process for (a), the loader worker in steady state for (b)), i.e. what one worker core delivers.",
        "",
        "(a) Decode only, CPU ms per clip (the frames of each video's first training clip, from the sample's bytes):",
        "",
        "| decoder (`data.decoder`) | " + " | ".join(ENCODINGS.values()) + " |",
        "|---|---|---|",
        *rows,
        "",
        f"Frames: every decoder returned the same frames, bit for bit: {'yes' if identical else 'NO'}. pyav had the "
        f"decoder produce {pyav['now'].frames_decoded:.1f} frames per 16-frame clip (unrequested non-reference frames "
        f"skipped). Fastest on the CPU: `{fastest}`; the default (`data.decoder`) is `{DEFAULT_DECODER}`.",
        "",
        "(b) Training pipeline, one worker process, worker CPU ms per clip (clips/s per worker core):",
        "",
        "| worker path | " + " | ".join(f"×{r} repeated sampling" for r in REPEATS) + " |",
        "|---|---|---|",
    ]
    for name in dict.fromkeys(name for name, _ in pipeline):
        cells = []
        for repeats in REPEATS:
            rate = pipeline.get((name, repeats))
            cells.append(f"{rate.cpu_ms_per_clip:.1f} ({rate.per_cpu_second:.1f})" if rate else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    default = f"now: {DEFAULT_DECODER}"
    for repeats in REPEATS:
        ratio = pipeline[(BEFORE, repeats)].cpu_seconds / pipeline[(BEFORE, repeats)].clips
        ratio /= pipeline[(default, repeats)].cpu_seconds / pipeline[(default, repeats)].clips
        lines.append(
            f"×{repeats}: {ratio:.2f}× fewer worker CPU seconds per clip now ({default.split(': ')[1]}) than before "
            f"(target ≥ 1.3: {'met' if ratio >= 1.3 else 'NOT met'})."
        )
    cores = {name: _cores(rate.per_cpu_second) for (name, repeats), rate in pipeline.items() if repeats == 4}
    lines += [
        "",
        f"Feeding one GPU at {TARGET_GPU_CLIPS_PER_S} clips/s with ×4 repeated sampling takes about "
        f"{cores[default]} worker cores decoding on the CPU now (before: {cores[BEFORE]})"
        + (f", and {cores[PLANNED]} when the GPU decodes (NVDEC) and the workers only plan" if PLANNED in cores else "")
        + "; one core per worker (`data.num_workers`), plus the training process itself. Workers hand over uint8; "
        f"normalising to float32 on the host (no GPU) costs the training process {normalise_ms:.1f} ms per clip, "
        "on a GPU it runs on the device.",
        "",
        f"CPU load average (1 min) at start / end of the run: {load_before:.1f} / {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores (other jobs share the machine: CPU times are best-of-N and still vary).",
    ]
    return "\n".join(lines)
