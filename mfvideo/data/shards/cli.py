"""Argument parser for tools/make_shards.py: one sub-command per source, shared output options."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from mfvideo.data.shards.sources.demo import DemoSource
from mfvideo.data.shards.writer import OutputMismatch, ShardOptions, make_shards

log = logging.getLogger("make_shards")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.I)


def parse_size(text: str) -> int:
    """Bytes from '1G', '500M', '2048' (binary multiples)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 500M, 2048)")
    scale = 1 << (10 * " KMGT".index((match.group(2) or " ").upper()))
    return int(float(match.group(1)) * scale)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory of this split")
    parser.add_argument("--name", help="shard file prefix (default: basename of --out)")
    parser.add_argument("--max-count", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--max-size", type=parse_size, default=1 << 30,
                        help="member bytes per shard, e.g. 1G, 500M (default 1G)")
    parser.add_argument("--short-side", type=int, default=None,
                        help="re-encode to H.264 with this short side (never upscaled), fps kept, a keyframe "
                             "every second; default: copy the original bytes")
    parser.add_argument("--workers", type=int, default=1, help="processes (output does not depend on it)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete existing shards of another run in --out instead of refusing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _demo_parser(sub) -> None:
    parser = sub.add_parser("demo", help="procedural moving-shapes videos (class = kind of motion)")
    parser.add_argument("--num-videos", type=int, default=200)
    parser.add_argument("--num-classes", type=int, default=4, help="2..8 motion kinds")
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--min-frames", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=48)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="use another seed for another split")
    parser.set_defaults(build_source=lambda a: DemoSource(
        num_videos=a.num_videos, num_classes=a.num_classes, width=a.width, height=a.height,
        min_frames=a.min_frames, max_frames=a.max_frames, fps=a.fps, seed=a.seed))
    _add_output_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a dataset split as WebDataset tar shards + manifest.json + rejects.jsonl "
                    "(format: shards/README.md). Rerun with the same arguments to resume.")
    sub = parser.add_subparsers(dest="source", required=True)
    for add in _SOURCE_PARSERS:
        add(sub)
    return parser


_SOURCE_PARSERS = [_demo_parser]


def main(argv: list[str] | None = None) -> int:
    from mfvideo.log import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        source = args.build_source(args)
    except (ValueError, OSError) as err:
        log.error("%s", err)
        return 2
    options = ShardOptions(out=args.out, name=args.name, max_count=args.max_count, max_size=args.max_size,
                           short_side=args.short_side, workers=args.workers, overwrite=args.overwrite,
                           progress=not args.no_progress)
    try:
        summary = make_shards(source, options)
    except OutputMismatch as err:
        log.error("%s", err)
        return 2
    print(f"{summary.num_samples} samples in {summary.num_shards} shards under {summary.out}"
          f" ({summary.resumed_shards} found finished); "
          f"{summary.num_rejects} rejected (see {summary.out / 'rejects.jsonl'})", file=sys.stderr)
    return 0
