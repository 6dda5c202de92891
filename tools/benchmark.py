#!/usr/bin/env python
"""Benchmarks; each writes its section of docs/benchmarks.md. Argument parsing only: the work is in mfvideo."""

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)

    shards = sub.add_parser("shards", help="make_shards videos/s per worker, copy vs re-encode")
    shards.add_argument("--videos", type=int, default=24)
    shards.add_argument("--width", type=int, default=480)
    shards.add_argument("--height", type=int, default=360)
    shards.add_argument("--frames", type=int, default=90)
    shards.add_argument("--short-side", type=int, default=320)

    data = sub.add_parser(
        "data", help="worker CPU time per clip before/after, decoders side by side, repeated sampling"
    )
    data.add_argument("--videos", type=int, default=32)
    data.add_argument("--seconds", type=float, default=10.0)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--rounds", type=int, default=3)
    data.add_argument(
        "--decord-site",
        nargs="*",
        default=[],
        metavar="DIR",
        help="folders holding other decord builds to compare, e.g. made by "
        "`pip install --no-deps --target DIR decord2` (decord and decord2 share the import name)",
    )

    model = sub.add_parser("model", help="HOG target and its exactness, attention kernels, MaskFeat training step")
    model.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    model.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default: torch's); 1 is steadier on a machine shared with other jobs",
    )

    finetune = sub.add_parser("finetune", help="fine-tuning step time per clip (augmentation, step) and test clips/s")
    finetune.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per measurement")
    finetune.add_argument("--batch", type=int, default=4, help="micro-batch")
    finetune.add_argument(
        "--size",
        dest="sizes",
        nargs=3,
        action="append",
        metavar=("ARCH", "FRAMES", "CROP"),
        help="model and clip size, repeatable (default: mvit_s 8 112 on CPU, mvit_s 16 224 on GPU)",
    )

    detect = sub.add_parser("detect", help="detection step time per clip, full-frame test clips/s, RoIAlign")
    detect.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per measurement")
    detect.add_argument("--batch", type=int, default=4, help="micro-batch")
    detect.add_argument("--rois", type=int, default=4, help="boxes per clip")
    detect.add_argument(
        "--size",
        dest="sizes",
        nargs=4,
        action="append",
        metavar=("ARCH", "FRAMES", "CROP", "TEST_SHORT_SIDE"),
        help="model, training clip size and test short side, repeatable (default: mvit_s 8 112 112 "
        "on CPU, mvit_s 16 224 256 on GPU)",
    )

    gpu = sub.add_parser(
        "gpu",
        help="on CUDA: MaskFeat MViT-S/L clips/s and MFU in bf16, checkpointing, torch.compile, attention kernels, "
        "the HOG share, detection and fine-tuning steps, worker cores per GPU",
    )
    gpu.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds per measurement")
    gpu.add_argument(
        "--cpu-clips-per-core",
        type=float,
        default=None,
        help="training clips one loader worker core makes per second at ×4 repeated sampling, for the worker cores a "
        "GPU needs (default: the data section's PyAV rate, mfvideo.benchmarks.gpu.CPU_CLIPS_PER_CORE_SECOND)",
    )
    gpu.add_argument(
        "--skip-compile", action="store_true", help="leave out torch.compile (its compiling takes minutes)"
    )
    gpu.add_argument("--loader-videos", type=int, default=48, help="synthetic videos for the loader rows")
    gpu.add_argument("--loader-seconds", type=float, default=4.0, help="their length")
    gpu.add_argument("--loader-copies", type=int, default=8, help="times each video is in the loader's shards")

    args = parser.parse_args()
    # Imported after parsing so `--help` stays instant and each benchmark loads only its own stage.
    if args.which == "shards":
        from mfvideo.benchmarks.shards import run
    elif args.which == "data":
        from mfvideo.benchmarks.data import run
    elif args.which == "finetune":
        from mfvideo.benchmarks.finetune import run
    elif args.which == "detect":
        from mfvideo.benchmarks.detect import run
    elif args.which == "gpu":
        from mfvideo.benchmarks.gpu import run
    else:
        from mfvideo.benchmarks.model import run
    run(args)


if __name__ == "__main__":
    main()
