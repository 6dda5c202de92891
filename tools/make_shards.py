#!/usr/bin/env python
"""Raw datasets → WebDataset shards. Argument parsing only: the work is in mfvideo.data.shards."""

import sys

from mfvideo.data.shards.cli import main

if __name__ == "__main__":
    sys.exit(main())
