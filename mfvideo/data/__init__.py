"""Data stage: shards streamed into batches. Shard lists and reading, tar parsing, decoding, clip sampling and
transforms, collate and the batch contract (`fields`), the resumable stream and its loader. Task-neutral: a loader is
handed its clip maker, collate and device steps (docs/layout.md)."""
