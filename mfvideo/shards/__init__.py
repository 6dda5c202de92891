"""Raw datasets → WebDataset tar shards + manifest (format: shards/README.md)."""

from mfvideo.shards.demo_ava import DemoAvaSpec, write_demo_ava
from mfvideo.shards.items import EncodeOptions, Item, ItemList, Reject, Sample, sanitize_key
from mfvideo.shards.sources.ava import AvaSource
from mfvideo.shards.sources.common import SourceError
from mfvideo.shards.sources.demo import MOTIONS, DemoSource
from mfvideo.shards.sources.images import ImageFolderSource
from mfvideo.shards.sources.kinetics import KineticsSource
from mfvideo.shards.sources.ssv2 import SSv2Source
from mfvideo.shards.writer import (
    FORMAT_VERSION,
    MergeError,
    OutputMismatch,
    Part,
    ShardOptions,
    Summary,
    make_shards,
    merge_parts,
)

__all__ = [
    "AvaSource",
    "DemoAvaSpec",
    "DemoSource",
    "EncodeOptions",
    "FORMAT_VERSION",
    "ImageFolderSource",
    "Item",
    "ItemList",
    "KineticsSource",
    "MOTIONS",
    "MergeError",
    "OutputMismatch",
    "Part",
    "Reject",
    "SSv2Source",
    "Sample",
    "ShardOptions",
    "SourceError",
    "Summary",
    "make_shards",
    "merge_parts",
    "sanitize_key",
    "write_demo_ava",
]
