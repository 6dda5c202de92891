#!/usr/bin/env python
"""Frame-level AVA mAP@0.5 of a detections CSV against a ground-truth CSV:
`python tools/ava_eval.py --groundtruth GT.csv --detections DET.csv --labelmap MAP.pbtxt [--exclusions EXC.csv]`
(--help for the rest). Argument parsing and the work are in mfvideo.evaluation.ava.
"""

import sys

from mfvideo.evaluation.ava import main

if __name__ == "__main__":
    sys.exit(main())
