#!/usr/bin/env python
"""What a trained model says about video files: `python tools/predict.py CKPT VIDEO_OR_FOLDER... [--out preds.jsonl]`.

Classification: the top classes of each file, from the views tools/test.py takes. Detection: the actions of the person
boxes of `--boxes CSV`, and with `--render out.mp4` the boxes and their top actions drawn on the clip around each
keyframe. The checkpoint's own record describes the model; `--recipe` (and `section.key=value` after `--set`)
override it, and describe weights without one (PySlowFast, torchvision). Exit code 2 for bad input, naming the file.
"""

import argparse

from mfvideo.app.predict import PredictOptions, run_predict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="model.pt or model_best.pt written by tools/train.py, or imported weights")
    parser.add_argument("videos", nargs="+", help="video or image files, or folders searched for them")
    parser.add_argument("--recipe", help="recipe describing the model (default: the checkpoint's record)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides")
    parser.add_argument("--out", help="write one JSON line per file (detection: per box) here")
    parser.add_argument("--top-k", type=int, default=5, help="classes (actions) per file (box), default 5")
    parser.add_argument("--batch-size", type=int, help="views per forward pass (default: train.micro_batch_size)")
    parser.add_argument("--boxes", help="detection: AVA-format CSV of person boxes (video_id = the file's stem)")
    parser.add_argument("--min-score", type=float, default=0.0, help="detection: leave out boxes scored below this")
    parser.add_argument("--render", help="detection: draw the boxes and their actions into this MP4")
    args = parser.parse_args()
    options = PredictOptions(args.out, args.boxes, args.min_score, args.render, args.top_k, args.batch_size)
    raise SystemExit(run_predict(args.checkpoint, args.videos, args.recipe, args.set, options))


if __name__ == "__main__":
    main()
