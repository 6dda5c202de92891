#!/usr/bin/env python
"""The demo's summary table: `python tools/demo_report.py outputs/demo/seed0 [outputs/demo/seed1 ...]`.

Per run folder of `tools/dev.sh demo`: the explained variance of the masked HOG and the k-NN probe's top-1 over
pretraining, and the held-out test top-1 of the same fine-tuning from the MaskFeat weights and from scratch
(Markdown, as docs/demo.md tables it).
"""

import argparse
from pathlib import Path

from mfvideo.evaluation.demo_report import markdown_table, read_demo_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="demo run folders, e.g. outputs/demo/seed0")
    args = parser.parse_args()
    missing = [str(run) for run in args.runs if not run.is_dir()]
    if missing:
        parser.error(f"no such run folder: {', '.join(missing)}")
    runs = [read_demo_run(run) for run in args.runs]
    print(markdown_table(runs))
    for run in runs:
        hog = run.folder / "hog.png"
        if hog.is_file():
            print(f"HOG picture after pretraining ({run.folder.name}): {hog}")


if __name__ == "__main__":
    main()
