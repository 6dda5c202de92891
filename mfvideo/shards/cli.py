"""Argument parser for tools/make_shards.py: one sub-command per source with shared output options, and `merge`."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from mfvideo.common.fileio import LockHeld, PathEscape
from mfvideo.shards.demo_ava import (
    EVALUATED_ACTION_LIST,
    FULL_ACTION_LIST,
    SPLITS,
    DemoAvaSpec,
    annotations_file,
    detections_file,
    excluded_file,
    write_demo_ava,
)
from mfvideo.shards.sources.ava import AvaSource
from mfvideo.shards.sources.common import SourceError
from mfvideo.shards.sources.demo import BACKGROUNDS, DemoSource
from mfvideo.shards.sources.images import ImageFolderSource
from mfvideo.shards.sources.kinetics import KineticsSource
from mfvideo.shards.sources.ssv2 import SSv2Source
from mfvideo.shards.writer import MergeError, OutputMismatch, Part, ShardOptions, Summary, make_shards, merge_parts

log = logging.getLogger("make_shards")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.I)


def parse_size(text: str) -> int:
    """Bytes from '1G', '500M', '2048' (binary multiples)."""
    match = _SIZE.match(text.strip())
    if not match or float(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 500M, 2048)")
    scale = 1 << (10 * " KMGT".index((match.group(2) or " ").upper()))
    return int(float(match.group(1)) * scale)


def positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def parse_part(text: str) -> Part:
    """'3/8' -> part 3 (0-based) of 8."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match.group(1)) < int(match.group(2)):
        raise argparse.ArgumentTypeError(f"not a part: {text!r} (i/N with 0 <= i < N, e.g. 0/8)")
    return Part(int(match.group(1)), int(match.group(2)))


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory of this split")
    parser.add_argument("--name", help="shard file prefix (default: basename of --out)")
    parser.add_argument(
        "--max-count",
        type=positive_int,
        default=1000,
        help="inputs per shard (default 1000): a shard holds the samples of this many consecutive "
        "inputs, fewer where some are rejected or --max-size splits it",
    )
    parser.add_argument(
        "--max-size", type=parse_size, default=1 << 30, help="member bytes per shard, e.g. 1G, 500M (default 1G)"
    )
    parser.add_argument(
        "--short-side",
        type=int,
        default=None,
        help="re-encode to H.264 with this short side (never upscaled), fps kept, a keyframe "
        "every second; default: copy the original bytes",
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="processes (output does not depend on it)")
    parser.add_argument(
        "--overwrite", action="store_true", help="delete existing shards of another run in --out instead of refusing"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--part",
        type=parse_part,
        help="write only part i of N (0-based, e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT) "
        "under OUT/.parts/; when all N are done, 'merge --out OUT' joins them into the split a "
        "single run would write",
    )


def _demo_parser(sub) -> None:
    parser = sub.add_parser(
        "demo", help="procedural moving-shapes videos (class = kind of motion, or shape and kind of motion)"
    )
    parser.add_argument("--num-videos", type=int, default=200)
    parser.add_argument("--motions", type=int, default=4, help="2..8 motion kinds (at most 4 with --shapes)")
    parser.add_argument(
        "--shapes", type=int, default=0, help="0: the class is the motion; 2..4: the class is the pair (shape, motion)"
    )
    parser.add_argument("--background", choices=BACKGROUNDS, default="textured")
    parser.add_argument("--width", type=int, default=112)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--min-frames", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=48)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="use another seed for another split")
    parser.set_defaults(
        build_source=lambda a: DemoSource(
            num_videos=a.num_videos,
            num_motions=a.motions,
            num_shapes=a.shapes,
            background=a.background,
            width=a.width,
            height=a.height,
            min_frames=a.min_frames,
            max_frames=a.max_frames,
            fps=a.fps,
            seed=a.seed,
        )
    )
    _add_output_options(parser)


def _demo_ava_parser(sub) -> None:
    parser = sub.add_parser(
        "demo-ava",
        help="write a procedural dataset laid out like AVA v2.2 (not shards: run 'ava' on it)",
        description="Writes movies of 1-3 moving textured shapes ('actors') with, per keyframe (every second from 2 "
        "to SECONDS-2), a box per actor and multi-label actions set by motion alone (stand, walk "
        "left/right, turn clockwise/counterclockwise, grow, shrink, walk toward another actor), in the "
        "files and layout of AVA v2.2: movies/<video_id>.mp4, ava_action_list_v2.2.pbtxt (every "
        "action, with label_type), ava_action_list_v2.2_for_activitynet_2019.pbtxt (the evaluated "
        "subset), ava_{train,val}_v2.2.csv, ava_{train,val}_excluded_timestamps_v2.2.csv, "
        "ava_{train,val}_predicted_boxes.csv (person detections with scores) and "
        "ava_included_timestamps_v2.2.txt. Train and val are different movies. The same arguments "
        "give the same bytes. Shard each split with the 'ava' command it prints (shards/README.md).",
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (an empty or earlier demo-ava one)")
    parser.add_argument("--num-movies", type=int, default=40, help="train + val movies, 2..10000 (default 40)")
    parser.add_argument(
        "--val-movies", type=int, default=None, help="how many of them are val (default a fifth, at least 1)"
    )
    parser.add_argument("--seconds", type=int, default=10, help="movie length, 5..900 (default 10)")
    parser.add_argument("--width", type=int, default=128, help="even, 48..1024 (default 128)")
    parser.add_argument("--height", type=int, default=96, help="even, 48..1024 (default 96)")
    parser.add_argument("--fps", type=int, default=30, help="10..60 (default 30)")
    parser.add_argument("--seed", type=int, default=0, help=">= 0; another seed, another dataset")
    parser.set_defaults(part=None)


def _kinetics_parser(sub) -> None:
    parser = sub.add_parser("kinetics", help="Kinetics 400/600/700 (official CSV or 'path label' list)")
    parser.add_argument("--videos", required=True, help="video folder, flat or with class sub-folders")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--csv", help="official annotation CSV: label,youtube_id,time_start,time_end,split[,is_cc]")
    given.add_argument("--list", dest="list_file", help="lines 'path label' (path relative to --videos)")
    parser.add_argument("--class-map", help="JSON {name: id} or one name per line (default: sorted names)")
    parser.add_argument(
        "--unlabelled",
        action="store_true",
        help="the --csv has no label column on purpose (a test split): every label is -1. Without "
        "it, a CSV without a label column is an error",
    )
    parser.set_defaults(
        build_source=lambda a: KineticsSource(
            videos=a.videos, csv=a.csv, list_file=a.list_file, class_map=a.class_map, unlabelled=a.unlabelled
        )
    )
    _add_output_options(parser)


def _ssv2_parser(sub) -> None:
    parser = sub.add_parser("ssv2", help="Something-Something v2")
    parser.add_argument("--labels", required=True, help="labels.json")
    parser.add_argument("--annotations", required=True, help="train.json, validation.json or test.json")
    parser.add_argument("--videos", required=True, help="folder of <id>.webm")
    parser.set_defaults(build_source=lambda a: SSv2Source(labels=a.labels, annotations=a.annotations, videos=a.videos))
    _add_output_options(parser)


def _ava_parser(sub) -> None:
    parser = sub.add_parser("ava", help="AVA v2.2: one clip per keyframe with its boxes")
    parser.add_argument("--action-list", required=True, help="action-list pbtxt")
    parser.add_argument("--movies", required=True, help="folder of <video_id>.<ext>")
    parser.add_argument("--annotations", help="ava_{train,val}_v2.2.csv")
    parser.add_argument("--excluded", help="ava_{train,val}_excluded_timestamps_v2.2.csv")
    parser.add_argument("--detections", help="person detections CSV with scores")
    parser.add_argument("--min-detection-score", type=float, default=0.0)
    parser.add_argument("--half-span", type=float, default=1.5, help="seconds cut each side of the keyframe")
    parser.set_defaults(
        build_source=lambda a: AvaSource(
            action_list=a.action_list,
            movies=a.movies,
            annotations=a.annotations,
            excluded=a.excluded,
            detections=a.detections,
            min_detection_score=a.min_detection_score,
            half_span=a.half_span,
        )
    )
    _add_output_options(parser)


def _images_parser(sub) -> None:
    parser = sub.add_parser("images", help="image folder root/<class>/<image> (single-frame samples)")
    parser.add_argument("--root", required=True)
    parser.add_argument("--class-map", help="JSON {name: id} or one name per line (default: sorted folders)")
    parser.set_defaults(build_source=lambda a: ImageFolderSource(root=a.root, class_map=a.class_map))
    _add_output_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a dataset split as WebDataset tar shards + manifest.json + rejects.jsonl "
        "(format: shards/README.md). Rerun with the same arguments to resume."
    )
    sub = parser.add_subparsers(dest="source", required=True)
    for add in _SOURCE_PARSERS:
        add(sub)
    return parser


def _merge_parser(sub) -> None:
    parser = sub.add_parser("merge", help="join the parts written with --part i/N into one split")
    parser.add_argument("--out", type=Path, required=True, help="the --out the parts were written with")
    parser.add_argument("--overwrite", action="store_true", help="replace a different split already in --out")
    parser.set_defaults(part=None)


_SOURCE_PARSERS = [
    _kinetics_parser,
    _ssv2_parser,
    _ava_parser,
    _images_parser,
    _demo_parser,
    _demo_ava_parser,
    _merge_parser,
]


def _write_demo_ava(args: argparse.Namespace) -> str:
    spec = DemoAvaSpec(
        num_movies=args.num_movies,
        val_movies=args.val_movies,
        seconds=args.seconds,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seed=args.seed,
    )
    done = write_demo_ava(spec, args.out)
    lines = [
        f"{split}: movies {done.movies[split]}, keyframes {done.keyframes[split]} (and {done.excluded[split]} "
        f"excluded), boxes {done.boxes[split]}, detections {done.detections[split]}"
        for split in SPLITS
    ]
    lines.append(
        f"written under {args.out} (evaluation uses the actions of {args.out / EVALUATED_ACTION_LIST}); shard it with:"
    )
    lines += [
        f"  make_shards.py ava --action-list {args.out / FULL_ACTION_LIST} --movies {args.out / 'movies'} "
        f"--annotations {args.out / annotations_file(split)} --excluded {args.out / excluded_file(split)} "
        f"--detections {args.out / detections_file(split)} --out SHARDS/{split}"
        for split in SPLITS
    ]
    return "\n".join(lines)


def _shard_report(summary: Summary, args: argparse.Namespace) -> str:
    report = (
        f"{summary.num_samples} samples in {summary.num_shards} shards under {summary.out}"
        f" ({summary.resumed_shards} found finished); "
        f"{summary.num_rejects} rejected (see {summary.out / 'rejects.jsonl'})"
    )
    if args.part is not None:
        report += (
            f"\npart {args.part} done; when all {args.part.count} are, join them with: "
            f"make_shards.py merge --out {args.out}"
        )
    return report


def _run(args: argparse.Namespace) -> str:
    """Does what the command asks; returns the report for the terminal."""
    if args.source == "demo-ava":
        return _write_demo_ava(args)
    if args.source == "merge":
        return _shard_report(merge_parts(args.out, overwrite=args.overwrite), args)
    source = args.build_source(args)
    options = ShardOptions(
        out=args.out,
        name=args.name,
        max_count=args.max_count,
        max_size=args.max_size,
        short_side=args.short_side,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        part=args.part,
    )
    return _shard_report(make_shards(source, options), args)


def main(argv: list[str] | None = None) -> int:
    from mfvideo.common.log import setup_logging

    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        report = _run(args)
    except (LockHeld, MergeError, OutputMismatch, SourceError, PathEscape, OSError) as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished shards are kept; run the same command again to resume")
        return 130
    print(report, file=sys.stderr)
    return 0
