#!/usr/bin/env python
"""Raw datasets → WebDataset shards. Argument parsing only: the work is in mfvideo.shards."""

import sys

from mfvideo.shards.cli import main

if __name__ == "__main__":
    sys.exit(main())
