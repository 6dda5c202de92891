"""`tools/benchmark.py gpu`: what one GPU does with the models in bf16, written to the "GPU" section of
docs/benchmarks.md. It needs CUDA: without it, one line says so and nothing is measured or written.

Measured in one process, each figure the best of interleaved rounds (`mfvideo.benchmarks.timing`):
- MaskFeat pretraining of MViT-S and MViT-L at 16×224²: the training step (forward under bf16 autocast, HOG target
  from the uint8 pixels on the device, backward, fused AdamW on fp32 weights) at each micro-batch tried, the fastest
  in clips/s kept (a micro-batch that runs out of memory ends the search), with its model-FLOPs utilisation: 3 ×
  the forward FLOPs of one clip (`mfvideo.benchmarks.complexity.MEASURED`, counted on the meta device, HOG and
  recomputation not counted) × clips/s over the dense bf16 peak of the device's data sheet;
- at MViT-S's best micro-batch: activation checkpointing on against off, torch.compile on against off (its compile
  time apart), explicit attention against the default folded kernel, and the HOG target's share of the step;
- the attention kernels of MViT-S block 0 (`mfvideo.benchmarks.model.attention_benchmark`);
- the detection and fine-tuning steps of MViT-S at their recipes' micro-batch (`mfvideo.benchmarks.detect`,
  `mfvideo.benchmarks.finetune`);
- the loader worker cores one GPU needs at the measured MViT-S rate, from a CPU rate in clips per core-second;
- the training loader's clips/s into the GPU with 16 workers on real-encoded shards, for each decoder and for NVDEC.

DeepSpeed's bf16 mode, which training uses, keeps bf16 weights in the module and fp32 master weights in the optimizer
instead of autocasting: the step here is the same arithmetic in the matrix products, not DeepSpeed's step itself.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import nn

from mfvideo.benchmarks import detect, finetune
from mfvideo.benchmarks.complexity import MEASURED
from mfvideo.benchmarks.model import attention_benchmark, peak_bf16_flops, pretrain_batch
from mfvideo.benchmarks.report import write_section
from mfvideo.benchmarks.timing import best_seconds
from mfvideo.config.schema import ModelConfig
from mfvideo.tasks import build_model

FRAMES, CROP = 16, 224
# Throughput targets per H100 (the project's), and the HOG target's largest share of a training step.
TARGET_CLIPS_PER_S = {"mvit_s": 600.0, "mvit_l": 130.0}
HOG_SHARE_TARGET = 0.03
# Micro-batches tried, smallest first; the pretraining recipes use 4 per GPU on 64 GPUs.
MICRO_BATCHES = {"mvit_s": (8, 16, 32, 64), "mvit_l": (4, 8, 16)}
DETECT_MICRO_BATCH, DETECT_ROIS, DETECT_TEST_SHORT_SIDE = 8, 4, 256  # recipes/ava_mvit_s_ft.yaml
FINETUNE_MICRO_BATCH = 8  # recipes/k400_mvit_s_ft.yaml
# One loader worker core's training clips per second at ×4 repeated sampling (16×4 clips at 224, shards as make_shards
# writes them), from the data section of docs/benchmarks.md (b) at commit c6af2d7 on the 2-core CPU machine: PyAV in the
# worker, and only planning the clips when NVDEC decodes. `--cpu-clips-per-core` replaces the first.
CPU_CLIPS_PER_CORE_SECOND = 48.7
PLANNING_CLIPS_PER_CORE_SECOND = 429.6
NVDEC_CORES_TARGET = 8

CUDA = torch.device("cuda")
LOADER_WORKERS = 16


@dataclass(frozen=True)
class Step:
    """A training step measured at one micro-batch."""

    micro_batch: int
    seconds: float
    peak_gib: float  # most memory the step held at once, parameters and optimizer state included

    @property
    def clips_per_s(self) -> float:
        return self.micro_batch / self.seconds


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def free_memory() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def unless_out_of_memory(measure: Callable[[], object]) -> Optional[object]:
    """`measure()`, or None when the GPU ran out of memory. The failed attempt's tensors are held by the exception's
    traceback, so memory is freed only after the except block has let go of it."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        pass
    free_memory()
    return None


def pretraining_model(arch: str, activation_checkpointing: bool = False) -> nn.Module:
    cfg = replace(ModelConfig(arch=arch, task="pretrain"), activation_checkpointing=activation_checkpointing)
    torch.manual_seed(0)
    with CUDA:  # initialised where it runs: MViT-L's 218M weights drawn on the CPU would take seconds
        return build_model(cfg, FRAMES, CROP).train()


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> Callable[[], None]:
    """Forward under bf16 autocast, backward, the optimizer's step: one training step on `batch`."""

    def step() -> None:
        with torch.autocast(CUDA.type, dtype=torch.bfloat16):
            loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_step(model: nn.Module, optimizer: torch.optim.Optimizer, micro_batch: int, repeats: int) -> Optional[Step]:
    """Best seconds of a training step of `micro_batch` clips and its peak memory; None when it does not fit."""

    def measure() -> Step:
        batch = pretrain_batch(micro_batch, FRAMES, CROP, CUDA)
        torch.cuda.reset_peak_memory_stats(CUDA)
        seconds = best_seconds({"step": training_step(model, optimizer, batch)}, repeats, CUDA)["step"]
        return Step(micro_batch, seconds, torch.cuda.max_memory_allocated(CUDA) / 2**30)

    step = unless_out_of_memory(measure)
    optimizer.zero_grad(set_to_none=True)
    return step


def fused_adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def mfu(clips_per_s: float, arch: str, peak: Optional[float]) -> str:
    if peak is None:
        return "peak unknown"
    flops_per_clip = 3 * 2 * MEASURED[f"{arch}_maskfeat_pretrain"].gmacs * 1e9  # FLOPs = 2 MACs; backward ≈ 2 forwards
    return f"{100 * flops_per_clip * clips_per_s / peak:.1f} %"


def throughput(arch: str, repeats: int, peak: Optional[float]) -> tuple[list[str], Optional[Step]]:
    """Table rows of every micro-batch tried for `arch`, and the fastest step. Call `free_memory()` after it."""
    model = pretraining_model(arch)
    optimizer = fused_adamw(model)
    rows, best = [], None
    for micro_batch in MICRO_BATCHES[arch]:
        step = measure_step(model, optimizer, micro_batch, repeats)
        if step is None:
            rows.append(f"| {arch} | {micro_batch} | out of memory | | | |")
            print(rows[-1], flush=True)
            break
        rows.append(
            f"| {arch} | {micro_batch} | {1e3 * step.seconds:.0f} | {step.clips_per_s:.0f} | "
            f"{mfu(step.clips_per_s, arch, peak)} | {step.peak_gib:.1f} |"
        )
        print(rows[-1], flush=True)
        if best is None or step.clips_per_s > best.clips_per_s:
            best = step
    return rows, best


def variant_row(name: str, step: Optional[Step], baseline: Step, note: str = "") -> str:
    if step is None:
        return f"| {name} | out of memory at micro-batch {baseline.micro_batch} | | | {note} |"
    return (
        f"| {name} | {1e3 * step.seconds:.0f} | {step.clips_per_s:.0f} | {step.seconds / baseline.seconds:.2f}× | "
        f"{step.peak_gib:.1f} GiB{'; ' + note if note else ''} |"
    )


def mvit_s_variants(best: Step, repeats: int, with_compile: bool) -> tuple[list[str], float]:
    """Rows of MViT-S at its best micro-batch with one thing changed (checkpointing, explicit attention, and
    torch.compile when `with_compile`), and the HOG target's share of the default step. Call `free_memory()` after
    it: its models go with its frame."""
    rows = [variant_row("as measured above (folded attention, no checkpointing, eager)", best, best)]
    rows.append(checkpointing_row(best, repeats))
    free_memory()

    model = pretraining_model("mvit_s")
    optimizer = fused_adamw(model)
    model.backbone.set_attention_kernel("explicit")
    explicit = measure_step(model, optimizer, best.micro_batch, repeats)
    rows.append(variant_row("explicit attention (matmul, softmax, matmul)", explicit, best))
    model.backbone.set_attention_kernel("folded")

    batch = pretrain_batch(best.micro_batch, FRAMES, CROP, CUDA)
    hog_seconds = best_seconds({"hog": lambda: model.hog(batch["pixels"])}, repeats, CUDA)["hog"]

    if with_compile:
        rows.append(compiled_row(model, optimizer, batch, best, repeats))
    else:
        rows.append("| torch.compile | not measured (`--skip-compile`) | | | |")
    print(*rows, sep="\n", flush=True)
    return rows, hog_seconds / best.seconds


def checkpointing_row(best: Step, repeats: int) -> str:
    """MViT-S with activation checkpointing (every block recomputed in the backward) at `best`'s micro-batch."""
    model = pretraining_model("mvit_s", activation_checkpointing=True)
    step = measure_step(model, fused_adamw(model), best.micro_batch, repeats)
    return variant_row("activation checkpointing", step, best)


def compiled_row(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, best: Step, repeats: int) -> str:
    """The row of `torch.compile(model)` (default mode) at `best`'s micro-batch, its compile time apart."""
    compiled = torch.compile(model)
    start = time.perf_counter()
    try:
        training_step(compiled, optimizer, batch)()  # the first call compiles the forward and the backward
        torch.cuda.synchronize(CUDA)
        compile_seconds = time.perf_counter() - start
        step = measure_step(compiled, optimizer, best.micro_batch, repeats)
    except Exception as err:  # a compiler failure is a finding to report, not a reason to lose the other figures
        first_line = (str(err).strip().splitlines() or [""])[0][:160]
        return f"| torch.compile (default mode) | failed: {type(err).__name__}: {first_line} | | | |"
    finally:
        optimizer.zero_grad(set_to_none=True)
    return variant_row("torch.compile (default mode)", step, best, f"compiling took {compile_seconds:.0f} s")


def detection_and_finetuning(repeats: int) -> tuple[list[str], list[str]]:
    """Rows: the detection step and test forward, the fine-tuning step and test forward (MViT-S, per clip), and
    RoIAlign 7×7 of a detection micro-batch on the head's 14×14 map."""
    rows = []
    times = detect.measure_model(
        "mvit_s", FRAMES, CROP, DETECT_TEST_SHORT_SIDE, DETECT_MICRO_BATCH, DETECT_ROIS, repeats, CUDA
    )
    test_h, test_w = times["test_size"]
    rows.append(
        f"| detection (AVA head, {DETECT_ROIS} boxes per clip) | {DETECT_MICRO_BATCH} | "
        f"{1e3 * times['train'] / DETECT_MICRO_BATCH:.1f} | {DETECT_MICRO_BATCH / times['train']:.0f} | "
        f"{FRAMES}×{test_h}×{test_w}: {DETECT_MICRO_BATCH / times['test']:.0f} |"
    )
    side = CROP // detect.STRIDE
    roi = detect.measure_roi_align(DETECT_MICRO_BATCH, times["channels"], side, side, DETECT_ROIS, repeats, CUDA)
    free_memory()
    per_clip = finetune.measure("mvit_s", FRAMES, CROP, FINETUNE_MICRO_BATCH, repeats, CUDA)
    rows.append(
        f"| fine-tuning (classifier, mixup/CutMix targets) | {FINETUNE_MICRO_BATCH} | {1e3 * per_clip['train']:.1f} | "
        f"{1 / per_clip['train']:.0f} | {FRAMES}×{CROP}²: {1 / per_clip['test']:.0f} |"
    )
    free_memory()
    roi_rows = [
        f"| {name} | {DETECT_MICRO_BATCH}×{times['channels']}×{side}×{side} | {DETECT_MICRO_BATCH * DETECT_ROIS} | "
        f"{1e3 * roi[name, 'fwd']:.3f} | {1e3 * roi[name, 'fwdbwd']:.3f} |"
        for name in sorted({name for name, _ in roi})
    ]
    print(*rows, *roi_rows, sep="\n", flush=True)
    return rows, roi_rows


def loader_rows(num_videos: int, seconds: float, workers: int, copies: int) -> list[str]:
    """The training loader's clips/s into this GPU, with `workers` worker processes, MaskFeat's batching (16×4
    clips at 224, ×4 repeated sampling, micro-batch 8, the batch normalised on the device) on shards as `make_shards`
    re-encodes (`mfvideo.benchmarks.data`), each of `num_videos` videos `copies` times over so that every worker makes
    many batches: decoding in the workers with each decoder, and on the GPU (NVDEC, the workers planning). Steady
    state: wall time over the batches after each worker's first two (start-up) and before the last `workers`
    (the idle tail), every batch synchronised on the device."""
    import shutil
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from mfvideo.benchmarks.data import BenchFiles, make_benchmark_videos
    from mfvideo.config.schema import DataConfig, MaskConfig
    from mfvideo.data.decode import DECODERS, DecoderUnavailable, check_decoder
    from mfvideo.data.loader import build_train_loader
    from mfvideo.data.stream import Placement
    from mfvideo.shards import ShardOptions, make_shards
    from mfvideo.tasks import pretrain

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_benchmark_videos(root, num_videos, seconds, seed=0, encodings=("now",))
        paths = []
        for source in sorted((root / "now-sources").glob("*.mp4")):
            for copy in range(copies):
                paths.append(root / "copies" / f"{source.stem}_{copy}.mp4")
                paths[-1].parent.mkdir(exist_ok=True)
                shutil.copyfile(source, paths[-1])
        make_shards(BenchFiles(tuple(map(str, paths))), ShardOptions(out=root / "loader", max_count=4, progress=False))
        for decoder, device in [*((d, "cpu") for d in DECODERS), ("torchcodec", "cuda")]:
            where = "NVDEC on the GPU, workers plan" if device == "cuda" else "in the workers"
            try:
                check_decoder(decoder, device)
            except DecoderUnavailable as err:
                rows.append(f"| `{decoder}` | {where} | – | not measured: {err} |")
                continue
            config = DataConfig(
                train=str(root / "loader"), repeated_sampling=4, num_workers=workers, shuffle_buffer=8, decoder=decoder
            )
            data = OmegaConf.structured(replace(config, decode_device=device))
            batching = pretrain.train_batching(SimpleNamespace(data=data, mask=OmegaConf.structured(MaskConfig())))
            loader = build_train_loader(data, batching, 8, Placement(num_workers=workers), seed=0)
            arrivals = []
            for batch in loader:
                torch.cuda.synchronize()
                arrivals.append((batch["video"].shape[0], time.perf_counter()))
            window = arrivals[2 * workers : len(arrivals) - workers]
            if len(window) < 2:
                rows.append(f"| `{decoder}` | {where} | – | too few batches ({len(arrivals)}): raise --loader-copies |")
                continue
            clips = sum(size for size, _ in window[1:])
            rate = clips / (window[-1][1] - window[0][1])
            rows.append(f"| `{decoder}` | {where} | {clips} | {rate:.0f} |")
    return rows


def device_line() -> str:
    props = torch.cuda.get_device_properties(CUDA)
    return (
        f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs), torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )


def run(args: argparse.Namespace) -> None:
    """args.repeats: interleaved timed rounds per measurement; args.cpu_clips_per_core: one loader worker core's
    training clips per second (None: CPU_CLIPS_PER_CORE_SECOND); args.skip_compile: leave torch.compile out."""
    if not torch.cuda.is_available():
        print("benchmark gpu: needs CUDA (torch.cuda.is_available() is False here); nothing measured or written")
        return
    name = torch.cuda.get_device_name(CUDA)
    peak = peak_bf16_flops(name)
    started = time.perf_counter()

    throughput_rows, best = [], {}
    for arch in ("mvit_s", "mvit_l"):
        rows, best[arch] = throughput(arch, args.repeats, peak)
        free_memory()
        throughput_rows += rows
    attention = attention_benchmark(args.repeats, CUDA)
    free_memory()
    variants, hog_share = [], None
    if best["mvit_s"] is not None:
        variants, hog_share = mvit_s_variants(best["mvit_s"], args.repeats, with_compile=not args.skip_compile)
        free_memory()
    task_rows, roi_rows = detection_and_finetuning(args.repeats)
    workers = min(LOADER_WORKERS, os.cpu_count() or 1)
    loader = loader_rows(args.loader_videos, args.loader_seconds, workers, args.loader_copies)

    def rate_verdict(arch: str) -> str:
        step = best[arch]
        if step is None:
            return f"{arch}: no micro-batch fits"
        target = TARGET_CLIPS_PER_S[arch]
        other_gpu = "" if "H100" in name else f", measured on {name}, not an H100"
        return (
            f"{arch} {step.clips_per_s:.0f} clips/s at micro-batch {step.micro_batch} (target ≥ {target:.0f} per "
            f"H100: {verdict(step.clips_per_s >= target)}{other_gpu})"
        )

    summary = [f"- MaskFeat pretraining, {rate_verdict('mvit_s')}; {rate_verdict('mvit_l')}."]
    if hog_share is not None:
        summary.append(
            f"- HOG target: {100 * hog_share:.2f} % of MViT-S's training step (target < "
            f"{100 * HOG_SHARE_TARGET:.0f} %: {verdict(hog_share < HOG_SHARE_TARGET)})."
        )
    if best["mvit_s"] is not None:
        rate = best["mvit_s"].clips_per_s
        per_core = args.cpu_clips_per_core or CPU_CLIPS_PER_CORE_SECOND
        nvdec_cores = math.ceil(rate / PLANNING_CLIPS_PER_CORE_SECOND)
        summary.append(
            f"- Feeding MViT-S at {rate:.0f} clips/s (×4 repeated sampling) takes about {math.ceil(rate / per_core)} "
            f"loader worker cores per GPU decoding on the CPU ({per_core:g} clips per core-second, "
            + ("`--cpu-clips-per-core`" if args.cpu_clips_per_core else "docs/benchmarks.md data (b), PyAV")
            + f"), and {nvdec_cores} when NVDEC decodes and the workers only plan ({PLANNING_CLIPS_PER_CORE_SECOND:g} "
            f"clips per core-second; target ≤ {NVDEC_CORES_TARGET}: {verdict(nvdec_cores <= NVDEC_CORES_TARGET)}; "
            "the training process's own share of NVDEC decoding is in the loader table below)."
        )
    body = "\n".join(
        [
            f"{device_line()}. Dense bf16 peak for model-FLOPs utilisation (MFU): "
            + (f"{peak / 1e12:.0f} TFLOP/s (data sheet)." if peak else "unknown for this device (MFU not given)."),
            f"Best of {args.repeats} interleaved rounds; the whole run took {time.perf_counter() - started:.0f} s.",
            "",
            *summary,
            "",
            f"MaskFeat pretraining step at {FRAMES}×{CROP}² (forward under bf16 autocast, HOG target from the uint8 "
            "pixels, backward, fused AdamW on fp32 weights; synthetic clips, cube masks). MFU = 3 × forward FLOPs "
            "of a clip (meta-device count) × clips/s / peak; the HOG target and recomputation are not counted. "
            "The search stops at the first micro-batch that runs out of memory:",
            "",
            "| model | micro-batch | step (ms) | clips/s | MFU | peak memory (GiB) |",
            "|---|---|---|---|---|---|",
            *throughput_rows,
            "",
            "MViT-S at its best micro-batch, one thing changed at a time (ratio: step time against the first row):",
            "",
            "| variant | step (ms) | clips/s | ratio | peak memory |",
            "|---|---|---|---|---|",
            *variants,
            "",
            attention,
            "",
            f"Detection and fine-tuning steps, MViT-S at {FRAMES}×{CROP}², bf16 autocast, AdamW "
            "(`tools/benchmark.py detect` and `finetune`, their synthetic batches), per clip; the test column is "
            "the eval-mode forward in clips/s at the size given:",
            "",
            "| step | micro-batch | train ms/clip | train clips/s | test clips/s |",
            "|---|---|---|---|---|",
            *task_rows,
            "",
            f"Training loader into the GPU, {workers} worker processes, MaskFeat's batching (16×4 clips at 224, ×4 "
            f"repeated sampling, micro-batch 8) over {args.loader_videos} synthetic 426×320 videos of "
            f"{args.loader_seconds:g} s as `make_shards` re-encodes them, each {args.loader_copies} times; clips/s in "
            "steady state (start-up and tail left out):",
            "",
            "| decoder | decoding | clips | clips/s |",
            "|---|---|---|---|",
            *loader,
            "",
            "RoIAlign 7×7 (aligned, adaptive sampling) of a detection micro-batch's boxes on the head's map, ms:",
            "",
            "| implementation | feature map | boxes | forward | forward + backward |",
            "|---|---|---|---|---|",
            *roi_rows,
        ]
    )
    print(body)
    write_section("GPU", body)
