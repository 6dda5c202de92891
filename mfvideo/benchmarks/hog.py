"""HOG target benchmark: `HogTarget` against `hog_reference`, side by side in one run.

Called by `tools/benchmark.py model`; `format_hog_benchmark` renders the result for docs/benchmarks.md.
Time is the best of `repeats` interleaved calls (the least disturbed by other load). Peak memory is
the most tensor memory held at once during one call beyond what existed before it: on CUDA from the
caching allocator's peak counter, on CPU from the profiler's record of every tensor allocation and
release (intermediates freed inside a single operator are not seen, for either function).
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import numpy as np
import torch
from skimage import data as skimage_data

from mfvideo.targets.hog import HogTarget, hog_reference

MIB = 2**20
KINETICS_MEAN, KINETICS_STD = 0.45, 0.225


def natural_video(batch: int, frames: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """B×3×T×size² clip of a real photograph panning sideways, normalised as the model input is."""
    photo = skimage_data.astronaut()                                 # 512×512×3 uint8
    reps = -(-size // photo.shape[0])
    photo = np.tile(photo, (reps, reps + 1, 1))
    clips = [np.stack([photo[:size, 3 * t + 5 * b:3 * t + 5 * b + size] for t in range(frames)])
             for b in range(batch)]
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).to(device=device, dtype=torch.float32)
    return (video / 255 - KINETICS_MEAN) / KINETICS_STD


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Most tensor bytes allocated at once while `fn` runs, beyond those allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Allocations are charged to the operator that made them, releases appear as "[memory]" events.
    changes = sorted((event.time_range.start, event.cpu_memory_usage if event.name == "[memory]"
                      else event.self_cpu_memory_usage) for event in prof.events())
    return max(itertools.accumulate((change for _, change in changes), initial=0))


def best_seconds(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Best wall time of each function over `repeats` rounds, the functions interleaved in each round."""
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def benchmark_hog(batch: int = 2, frames: int = 16, size: int = 224, repeats: int = 5,
                  device: str = "cpu") -> dict:
    """Time and peak memory of HogTarget and hog_reference on the same natural clip batch."""
    dev = torch.device(device)
    video = natural_video(batch, frames, size, dev)
    target = HogTarget().to(dev)
    fns = {"hog": lambda: target(video), "reference": lambda: hog_reference(video)}
    for fn in fns.values():   # warm-up
        fn()
    seconds = best_seconds(fns, repeats, dev)
    peaks = {name: peak_memory_bytes(fn, dev) for name, fn in fns.items()}
    target_frames = frames // target.temporal_stride if frames > 1 else 1
    one_hot_bytes = batch * target_frames * 3 * target.bins * size * size * 4
    return {
        "device": str(dev),
        "video_shape": [batch, 3, frames, size, size],
        "repeats": repeats,
        "hog_ms": seconds["hog"] * 1e3,
        "reference_ms": seconds["reference"] * 1e3,
        "time_ratio": seconds["hog"] / seconds["reference"],
        "hog_peak_mib": peaks["hog"] / MIB,
        "reference_peak_mib": peaks["reference"] / MIB,
        "memory_ratio": peaks["hog"] / peaks["reference"],
        "full_resolution_bins_mib": one_hot_bytes / MIB,
    }


def format_hog_benchmark(result: dict) -> str:
    """Markdown table of a `benchmark_hog` result, with the ≤ 0.5× time target."""
    shape = "×".join(str(n) for n in result["video_shape"])
    verdict = "met" if result["time_ratio"] <= 0.5 else "NOT met"
    return "\n".join([
        f"HOG target on a {shape} clip batch of a real photograph, normalised ({result['device']}, "
        f"best of {result['repeats']} interleaved runs):",
        "",
        "| | time (ms) | peak tensor memory (MiB) |",
        "|---|---|---|",
        f"| `HogTarget` (scatter into cells) | {result['hog_ms']:.1f} | {result['hog_peak_mib']:.1f} |",
        f"| `hog_reference` (full-resolution one-hot) | {result['reference_ms']:.1f} | "
        f"{result['reference_peak_mib']:.1f} |",
        f"| ratio | {result['time_ratio']:.3f} (target ≤ 0.5: {verdict}) | {result['memory_ratio']:.3f} |",
        "",
        f"A full-resolution 9-bin tensor for this batch alone is {result['full_resolution_bins_mib']:.1f} MiB.",
    ])
