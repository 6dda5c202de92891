#!/usr/bin/env python
"""Benchmarks; each writes its section of docs/benchmarks.md. Argument parsing only: the work is in mfvideo."""

import argparse

from mfvideo.data import benchmark as data_benchmark
from mfvideo.data.shards import benchmark as shards_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="which", required=True)
    # Each benchmark adds its sub-parser below and sets `run` to the package function that executes it.
    data_benchmark.add_parser(sub)
    shards_benchmark.add_parser(sub)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
