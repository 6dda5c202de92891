"""`tools/benchmark.py model`: HOG target vs reference, the attention kernels in one MViT block, a MaskFeat
training step on CPU, and (only with CUDA) bf16 throughput, model-FLOPs utilisation and the HOG share of a step.
Everything compared is measured side by side in the same run; results go to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from dataclasses import replace
from typing import Callable, Dict, List

import numpy as np
import torch

from mfvideo.benchmarks.complexity import build_on_meta, count_macs
from mfvideo.benchmarks.hog import benchmark_hog, format_hog_benchmark, normalise
from mfvideo.benchmarks.report import write_section
from mfvideo.config.schema import ModelConfig
from mfvideo.models.mvit import ATTENTION_KERNELS, MultiScaleBlock, block_configs, mvit_s
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks import build_model

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for model-FLOPs utilisation.
# Matched in this order against the device's name (an H100 SXM reports itself as "NVIDIA H100 80GB HBM3").
PEAK_BF16_FLOPS = {
    "H100 SXM": 989.4e12,
    "H100 PCIe": 756.0e12,
    "H100 NVL": 835.5e12,
    "H100": 989.4e12,
    "H200": 989.4e12,
    "A100": 312.0e12,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_ms(fns: Dict[str, Callable[[], object]], repeats: int, device: torch.device) -> Dict[str, float]:
    """Best wall time of each function over `repeats` interleaved runs (after one warm-up): on a shared machine
    the minimum is the run least disturbed by other processes."""
    for fn in fns.values():
        fn()
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: min(s) for name, s in samples.items()}


# --------------------------------------------------------------------------------------------------- attention


def attention_benchmark(repeats: int, device: torch.device) -> str:
    """MaskFeat MViT-S block 0 at 16×224² (8×56×56 queries, 8×7×7 keys): the three exact attention kernels, on the
    attention itself (the block's pooled q, k, v → output, relative positions included) and on the whole block, in
    fp32 on CPU and under bf16 autocast on CUDA (as training runs there)."""
    cfg = block_configs(replace(mvit_s(), keep_last_q_stride=False), (16, 224, 224))[0]
    block = MultiScaleBlock(cfg).to(device)
    attn = block.attn
    tokens = 1 + cfg.input_grid[0] * cfg.input_grid[1] * cfg.input_grid[2]
    x = torch.randn(1, tokens, cfg.dim_in, device=device, requires_grad=True)
    with torch.no_grad():  # the block's own pooled q, k, v of x
        q, k, v, q_grid, k_grid = attn.pooled_qkv(block.norm1(x), cfg.input_grid)
    q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
    bf16 = device.type == "cuda"
    parts = {"attention": lambda: attn.attend(q, k, v, q_grid, k_grid), "block": lambda: block(x, cfg.input_grid)[0]}

    def forward(kernel: str, part: str) -> Callable[[], object]:
        def run() -> object:
            attn.set_kernel(kernel)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return parts[part]()

        return run

    def training(kernel: str, part: str) -> Callable[[], object]:
        def run() -> None:
            attn.set_kernel(kernel)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = parts[part]()
            out.float().square().mean().backward()

        return run

    passes = {"fwd": forward, "fwd+bwd": training}
    ms = best_ms(
        {
            f"{kernel} {part} {name}": make(kernel, part)
            for part in parts
            for name, make in passes.items()
            for kernel in ATTENTION_KERNELS
        },
        repeats,
        device,
    )
    rows = []
    for part in parts:
        for name in passes:
            explicit = ms[f"explicit {part} {name}"]
            cells = [
                f"{ms[f'{kernel} {part} {name}']:.1f} ({ms[f'{kernel} {part} {name}'] / explicit:.2f}×)"
                for kernel in ATTENTION_KERNELS
            ]
            rows.append(f"| {part} | {name} | " + " | ".join(cells) + " |")
    folded_training = ms["folded attention fwd+bwd"] / ms["explicit attention fwd+bwd"]
    return "\n".join(
        [
            f"Attention of MaskFeat MViT-S block 0 ({q.shape[2]} queries, {k.shape[2]} keys, head width "
            f"{attn.head_dim}, batch 1, {device.type}, {'bf16 autocast' if bf16 else 'fp32'}, "
            f"{torch.get_num_threads()} threads, best of {repeats} interleaved runs), the three exact kernels of "
            '`MultiScaleAttention` in ms, and the ratio to explicit. "attention" is the attention itself (the block\'s '
            'pooled q, k, v → output, relative positions included; backward into q, k, v and the tables), "block" the '
            "whole MultiScaleBlock (QKV projection, pooling, MLP):",
            "",
            "| part | pass | " + " | ".join(f"`{kernel}`" for kernel in ATTENTION_KERNELS) + " |",
            "|---|---|---|---|---|",
            *rows,
            "",
            f"`folded` (the default) attention fwd+bwd = {folded_training:.2f}× explicit"
            + ("" if bf16 else f" (target ≤ 0.6 on CPU: {'met' if folded_training <= 0.6 else 'NOT met'})")
            + ". `folded` puts the relative positions into q and k and calls `scaled_dot_product_attention` without "
            "a mask (the fused flash kernels, on CPU too); `bias_mask` passes the bias as an additive float mask, "
            "which keeps SDPA on its math kernel whenever the bias needs a gradient; `explicit` writes out matmul, "
            "softmax, matmul.",
            *(
                []
                if bf16
                else [
                    "",
                    "On a CPU shared with other jobs the flash kernel's multi-threaded backward slows down "
                    "several-fold whenever another process holds a core, so CPU costs are "
                    "compared per core at one thread (`--threads 1`).",
                ]
            ),
        ]
    )


# --------------------------------------------------------------------------------------------------- training step


def pretrain_batch(batch: int, num_frames: int, crop: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """MaskFeat's batch on `device`: random uint8 pixels, the normalised clip beside them, cube masks."""
    generator = build_mask_generator("cube", mask_grid(num_frames, crop))
    rng = np.random.default_rng(0)
    masks = torch.stack([torch.from_numpy(generator(rng)) for _ in range(batch)])
    pixels = torch.randint(0, 256, (batch, 3, num_frames, crop, crop), dtype=torch.uint8, device=device)
    return {"video": normalise(pixels), "pixels": pixels, "mask": masks.to(device)}


def step_ms(
    model: torch.nn.Module, batch: Dict[str, torch.Tensor], repeats: int, device: torch.device, bf16: bool
) -> float:
    """Best ms of forward + backward of one batch (no optimizer step)."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = model(batch)["loss"]
        loss.backward()

    return best_ms({"step": step}, repeats, device)["step"]


def cpu_step_benchmark(repeats: int) -> str:
    batch_size, frames, crop = 1, 8, 128
    device = torch.device("cpu")
    model = build_model(ModelConfig(arch="mvit_s", task="pretrain"), frames, crop).train()
    ms = step_ms(model, pretrain_batch(batch_size, frames, crop, device), repeats, device, bf16=False)
    return (
        f"MaskFeat MViT-S pretraining step on CPU, fp32, {batch_size} clip of {frames}×{crop}²: forward + "
        f"backward {ms / batch_size:.0f} ms per clip (best of {repeats}, {torch.get_num_threads()} threads)."
    )


# --------------------------------------------------------------------------------------------------- GPU


def peak_bf16_flops(name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS.items():  # most specific names first
        if key in name and ("PCIe" in key) == ("PCIe" in name):
            return flops
    return None


def gpu_row(arch: str, batch_size: int, repeats: int, device: torch.device, peak: float | None) -> str:
    cfg = ModelConfig(arch=arch, task="pretrain")
    train_flops = 3 * 2 * count_macs(build_on_meta(cfg))  # forward + backward ≈ 3 forwards; FLOPs = 2 MACs
    model = build_model(cfg, 16, 224).to(device).train()
    batch = pretrain_batch(batch_size, 16, 224, device)
    ms = step_ms(model, batch, repeats, device, bf16=True)
    hog_ms = best_ms({"hog": lambda: model.hog(batch["pixels"])}, repeats, device)["hog"]
    clips_per_s = batch_size / (ms / 1e3)
    mfu = f"{100 * train_flops * clips_per_s / peak:.1f}%" if peak else "peak unknown"
    return (
        f"| MaskFeat {arch} | {batch_size} | {ms:.0f} | {clips_per_s:.1f} | {mfu} | "
        f"{100 * hog_ms / ms:.2f}% ({'met' if hog_ms / ms < 0.03 else 'NOT met'}) |"
    )


def gpu_benchmark(repeats: int) -> str:
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    rows = []
    for arch, batch_size in (("mvit_s", 8), ("mvit_l", 2)):
        rows.append(gpu_row(arch, batch_size, repeats, device, peak_bf16_flops(name)))
        torch.cuda.empty_cache()
    return "\n".join(
        [
            f"GPU ({name}), bf16 autocast, 16×224², forward + backward (no optimizer step), best of {repeats}. "
            "MFU = 3 × forward FLOPs (meta-device count) × clips/s / dense bf16 peak.",
            "",
            "| model | clips/step | step (ms) | clips/s | MFU | HOG share of a step (target < 3%) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


def run(args: argparse.Namespace) -> None:
    """args.repeats: timed runs per measurement; args.threads: torch CPU threads (default: torch's)."""
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    hog = benchmark_hog(batch=2, frames=16, size=224, repeats=args.repeats)
    sections = [
        format_hog_benchmark(hog),
        attention_benchmark(args.repeats, torch.device("cpu")),
        cpu_step_benchmark(args.repeats),
    ]
    if torch.cuda.is_available():
        sections += [attention_benchmark(args.repeats, torch.device("cuda")), gpu_benchmark(args.repeats)]
    else:
        sections.append("GPU: no GPU on this machine.")
    sections.append(
        f"CPU load average (1 min) at start / end of the run: {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share the machine: CPU times "
        "are best-of-N and still vary between runs)."
    )
    body = "\n\n".join(sections)
    print(body)
    write_section("model", body)
