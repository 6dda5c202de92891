"""Raw datasets → WebDataset tar shards + manifest (format: shards/README.md)."""

from mfvideo.data.shards.items import EncodeOptions, Item, ItemList, Reject, Sample, sanitize_key
from mfvideo.data.shards.sources.demo import DemoSource
from mfvideo.data.shards.writer import FORMAT_VERSION, OutputMismatch, ShardOptions, Summary, make_shards

__all__ = ["DemoSource", "EncodeOptions", "FORMAT_VERSION", "Item", "ItemList", "OutputMismatch", "Reject",
           "Sample", "ShardOptions", "Summary", "make_shards", "sanitize_key"]
