#!/usr/bin/env python
"""Target vs predicted HOG on the masked tokens of one training clip:
`python tools/hog_picture.py RECIPE model.init=WEIGHTS --out docs/demo_hog.png [section.key=value ...]`.

RECIPE is a pretraining recipe (model.task=pretrain) and WEIGHTS a MaskFeat checkpoint (e.g. <output_dir>/model.pt);
the clip comes from the first batch of the recipe's training loader (data.train).
"""

import argparse

from mfvideo.app.hog_picture import run_hog_picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="YAML pretraining recipe, e.g. recipes/demo_pt.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.init=…/model.pt")
    parser.add_argument("--out", required=True, help="PNG to write, e.g. docs/demo_hog.png")
    parser.add_argument("--clip", type=int, default=0, help="which clip of the first batch (default 0)")
    parser.add_argument("--steps", type=int, default=4, help="temporal tokens to show, at most (default 4)")
    args = parser.parse_args()
    print(run_hog_picture(args.recipe, args.overrides, args.out, args.clip, args.steps))


if __name__ == "__main__":
    main()
