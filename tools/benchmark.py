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

    data = sub.add_parser("data", help="loader clips/s vs the decord decode bound, repeated sampling")
    data.add_argument("--videos", type=int, default=40)
    data.add_argument("--seconds", type=float, default=3.0)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--rounds", type=int, default=3)

    model = sub.add_parser("model", help="HOG target, SDPA vs explicit attention, MaskFeat training-step timings")
    model.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")

    finetune = sub.add_parser("finetune", help="fine-tuning step time per clip (augmentation, step) and test clips/s")
    finetune.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per measurement")
    finetune.add_argument("--batch", type=int, default=4, help="micro-batch")
    finetune.add_argument("--size", dest="sizes", nargs=3, action="append", metavar=("ARCH", "FRAMES", "CROP"),
                          help="model and clip size, repeatable (default: mvit_s 8 112 on CPU, mvit_s 16 224 on GPU)")

    args = parser.parse_args()
    # Imported after parsing so `--help` stays instant and each benchmark loads only its own stage.
    if args.which == "shards":
        from mfvideo.benchmarks.shards import run
    elif args.which == "data":
        from mfvideo.benchmarks.data import run
    elif args.which == "finetune":
        from mfvideo.benchmarks.finetune import run
    else:
        from mfvideo.benchmarks.model import run
    run(args)


if __name__ == "__main__":
    main()
