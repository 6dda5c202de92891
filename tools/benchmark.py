#!/usr/bin/env python
"""Benchmarks; each writes its section of docs/benchmarks.md. Argument parsing only: the work is in mfvideo."""

import argparse

from mfvideo.models import benchmark as model_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    # Each benchmark adds its sub-parser below and sets `run` to the package function that executes it.
    model = sub.add_parser("model", help="HOG target, SDPA vs explicit attention, MaskFeat training-step timings")
    model.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    model.set_defaults(run=model_benchmark.run)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
