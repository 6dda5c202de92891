"""Benchmarks behind `tools/benchmark.py`: one module per sub-command (shards, data, model; hog is the model
benchmark's HOG part), each writing its section of docs/benchmarks.md through `report`."""
