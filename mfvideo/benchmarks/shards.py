"""Shard-writing throughput: videos/s for one worker in copy mode and in re-encode mode, measured side by side
on the same synthesised 360p H.264 videos (typical raw Kinetics)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mfvideo.benchmarks.report import write_section
from mfvideo.shards.sources.demo import DemoSource
from mfvideo.shards.sources.kinetics import KineticsSource
from mfvideo.shards.writer import ShardOptions, make_shards


def _timed(source, options: ShardOptions) -> float:
    start = time.perf_counter()
    summary = make_shards(source, options)
    elapsed = time.perf_counter() - start
    if summary.num_rejects:
        raise RuntimeError(f"benchmark input rejected {summary.num_rejects} videos; see {options.out}/rejects.jsonl")
    return elapsed


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        demo = DemoSource(
            num_videos=args.videos,
            width=args.width,
            height=args.height,
            min_frames=args.frames,
            max_frames=args.frames,
            seed=1,
        )
        generate = _timed(demo, ShardOptions(out=root / "input", progress=False))
        listing = _extract_inputs(root / "input", root / "videos")
        source = KineticsSource(videos=str(root / "videos"), list_file=str(listing))
        copy = _timed(source, ShardOptions(out=root / "copy", progress=False))
        reencode = _timed(source, ShardOptions(out=root / "reencode", short_side=args.short_side, progress=False))
    n = args.videos
    body = (
        f"{n} synthetic H.264 videos of {args.width}×{args.height}, {args.frames} frames at 30 fps "
        f"({args.frames / 30:.1f} s), one worker process (throughput scales with `--workers` up to the cores).\n\n"
        "| mode | videos/s per worker | s per video |\n|---|---|---|\n"
        f"| copy (probe + tar) | {n / copy:.1f} | {copy / n:.3f} |\n"
        f"| re-encode `--short-side {args.short_side}` (decode, scale, x264 veryfast) | {n / reencode:.2f} | "
        f"{reencode / n:.3f} |\n"
        f"| demo generation (render + encode at this size) | {n / generate:.2f} | {generate / n:.3f} |\n\n"
        f"Re-encode costs {reencode / copy:.0f}× copy in this run."
    )
    write_section("shards", body)
    print(body)


def _extract_inputs(shards: Path, videos: Path) -> Path:
    """The demo shards' mp4 files as a plain folder plus a 'path label' list (Kinetics list layout)."""
    import json
    import tarfile

    videos.mkdir(parents=True)
    lines = []
    manifest = json.loads((shards / "manifest.json").read_text())
    for shard in manifest["shards"]:
        with tarfile.open(shards / shard["file"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".mp4"):
                    (videos / member.name).write_bytes(tar.extractfile(member).read())
                    lines.append(f"{member.name} 0\n")
    listing = videos.parent / "list.txt"
    listing.write_text("".join(lines))
    return listing
