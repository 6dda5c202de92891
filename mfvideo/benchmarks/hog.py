"""HOG target benchmark: `HogTarget` against `hog_reference`, side by side in one run, on real decoded frames (a
photograph panning sideways, H.264-encoded and decoded with PyAV), and how exact the target is.

Called by `tools/benchmark.py model`; `format_hog_benchmark` renders the result for docs/benchmarks.md.
Exactness: the share of target values more than 1e-3 away from the formula evaluated in float64 on the pixel values
(exact gradients), for the target from the uint8 pixels (what MaskFeat uses) and from the same clip normalised to
float32 (what the model computed before, and what the official release computes).
Time is the best of `repeats` interleaved calls (the least disturbed by other load). Peak memory is
the most tensor memory held at once during one call beyond what existed before it: on CUDA from the
caching allocator's peak counter, on CPU from the profiler's record of every tensor allocation and
release (intermediates freed inside a single operator are not seen, for either function).
"""

from __future__ import annotations

import io
import itertools
from typing import Callable

import av
import numpy as np
import torch
from skimage import data as skimage_data

from mfvideo.benchmarks.timing import best_seconds
from mfvideo.config.schema import DataConfig
from mfvideo.data.transforms import Normalise
from mfvideo.targets.hog import HogTarget, hog_reference

MIB = 2**20


def _h264_round_trip(frames: np.ndarray) -> np.ndarray:
    """T×H×W×3 uint8 frames encoded to H.264 (x264 defaults, yuv420p) and decoded again: real decoded frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def natural_video(batch: int, frames: int, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """B×3×T×size² uint8 clips of a real photograph panning sideways, each H.264-encoded and decoded: the pixels
    the loader ships."""
    photo = skimage_data.astronaut()  # 512×512×3 uint8
    reps = -(-size // photo.shape[0])
    photo = np.tile(photo, (reps, reps + 1, 1))
    clips = [
        _h264_round_trip(np.stack([photo[:size, 3 * t + 5 * b : 3 * t + 5 * b + size] for t in range(frames)]))
        for b in range(batch)
    ]
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).contiguous().to(device)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → the backbone's float32 input, as the loader normalises them (default mean and std)."""
    data = DataConfig()
    return Normalise(data.mean, data.std)(pixels)


def inexact_fraction(target: torch.Tensor, pixels: torch.Tensor) -> float:
    """Share of `target`'s values more than 1e-3 from the formula evaluated in float64 on `pixels`."""
    exact = hog_reference(pixels.double())
    return ((target.double() - exact).abs() > 1e-3).double().mean().item()


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
    changes = sorted(
        (event.time_range.start, event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage)
        for event in prof.events()
    )
    return max(itertools.accumulate((change for _, change in changes), initial=0))


def benchmark_hog(batch: int = 2, frames: int = 16, size: int = 224, repeats: int = 5, device: str = "cpu") -> dict:
    """Time and peak memory of HogTarget and hog_reference on the same decoded clip batch, and the share of
    inexact target values from its pixels and from it normalised."""
    dev = torch.device(device)
    video = natural_video(batch, frames, size, dev)
    target = HogTarget().to(dev)
    inexact = {
        "pixels": inexact_fraction(target(video), video),
        "normalised": inexact_fraction(target(normalise(video)), video),
    }
    fns = {"hog": lambda: target(video), "reference": lambda: hog_reference(video)}
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
        "inexact_from_pixels": inexact["pixels"],
        "inexact_from_normalised": inexact["normalised"],
    }


def format_hog_benchmark(result: dict) -> str:
    """Markdown table of a `benchmark_hog` result, with the ≤ 0.5× time target."""
    shape = "×".join(str(n) for n in result["video_shape"])
    verdict = "met" if result["time_ratio"] <= 0.5 else "NOT met"
    return "\n".join(
        [
            f"HOG target on a {shape} uint8 clip batch of a real photograph panning sideways, H.264-encoded and "
            f"decoded ({result['device']}, best of {result['repeats']} interleaved runs):",
            "",
            "| | time (ms) | peak tensor memory (MiB) |",
            "|---|---|---|",
            f"| `HogTarget` (scatter into cells) | {result['hog_ms']:.1f} | {result['hog_peak_mib']:.1f} |",
            f"| `hog_reference` (full-resolution one-hot) | {result['reference_ms']:.1f} | "
            f"{result['reference_peak_mib']:.1f} |",
            f"| ratio | {result['time_ratio']:.3f} (target ≤ 0.5: {verdict}) | {result['memory_ratio']:.3f} |",
            "",
            f"A full-resolution 9-bin tensor for this batch alone is {result['full_resolution_bins_mib']:.1f} MiB.",
            "",
            "Exactness on these decoded frames, values more than 1e-3 from the formula evaluated in float64 on the "
            "pixel values:",
            "",
            "| target computed from | values off by > 1e-3 |",
            "|---|---|",
            f"| uint8 pixels (`MaskFeat`: `batch['pixels']`) | {100 * result['inexact_from_pixels']:.4f}% "
            f"(target ≤ 0.01%: {'met' if result['inexact_from_pixels'] <= 1e-4 else 'NOT met'}) |",
            f"| the normalised float32 clip (before; the official release) | "
            f"{100 * result['inexact_from_normalised']:.2f}% |",
        ]
    )
