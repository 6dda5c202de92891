"""Fine-tuning and testing speed (`tools/benchmark.py finetune`): where a fine-tuning step's time goes per clip, and
how many clips/s multi-view testing runs, on this machine.

Measured in one process, interleaved rounds, best of each (the machines are shared and noisy):
- worker side, per clip: RandAugment `rand-m7-n2-mstd0.5-inc1` on a uint8 clip (what a loader worker adds);
- batch side, per clip: random erasing 0.25 + mixup/CutMix with label smoothing on the normalised batch;
- the training step per clip: forward, soft-target loss, backward and AdamW of the classifier (fp32 on CPU, bf16
  autocast on a GPU), at the given size;
- test forward clips/s in eval mode (no grad), the multi-view test's model cost.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from mfvideo.benchmarks.report import write_section
from mfvideo.benchmarks.timing import best_seconds, train_and_test_jobs
from mfvideo.config.schema import ModelConfig
from mfvideo.data.augment import RandAugment
from mfvideo.data.batch import MixupCutmix, RandomErasing
from mfvideo.tasks import build_model

NUM_CLASSES = 400


def measure(arch: str, frames: int, crop: int, batch: int, repeats: int, device: torch.device) -> dict:
    rng = np.random.default_rng(0)
    clip = torch.from_numpy(rng.integers(0, 256, (frames, 3, crop, crop), dtype=np.uint8))
    rand_augment = RandAugment.from_spec("rand-m7-n2-mstd0.5-inc1")
    video = torch.randn(batch, 3, frames, crop, crop, device=device)
    labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch)).to(device)
    erasing, mixing = RandomErasing(0.25), MixupCutmix(NUM_CLASSES)

    def batch_ops():
        mixing(erasing(video.clone(), rng), labels, rng)

    model = build_model(
        replace(ModelConfig(arch=arch, task="classify", num_classes=NUM_CLASSES), drop_path=0.1), frames, crop
    ).to(device)
    train_batch = {"video": video, "label": labels}
    train_batch["video"], train_batch["target"] = mixing(video.clone(), labels, rng)

    jobs = {
        "rand_augment": lambda: [rand_augment(clip, rng) for _ in range(8)],
        "batch_ops": batch_ops,
        **train_and_test_jobs(model, train_batch, {"video": video}, device),
    }
    best = best_seconds(jobs, repeats, device, before=lambda name: model.train(name == "train"))
    per_clip = {name: best[name] / batch for name in ("batch_ops", "train", "test")}
    return {"rand_augment": best["rand_augment"] / 8, **per_clip}


def run(args) -> None:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    sizes = args.sizes or ([("mvit_s", 16, 224)] if device.type == "cuda" else [("mvit_s", 8, 112)])
    rows, load = [], os.getloadavg()[0]
    for arch, frames, crop in sizes:
        frames, crop = int(frames), int(crop)
        t = measure(arch, frames, crop, args.batch, args.repeats, device)
        rows.append(
            f"| {arch} | {frames}×{crop}² | {args.batch} | {1e3 * t['rand_augment']:.1f} | "
            f"{1e3 * t['batch_ops']:.2f} | {1e3 * t['train']:.0f} | {1 / t['test']:.1f} |"
        )
        print(rows[-1], flush=True)
    load = max(load, os.getloadavg()[0])
    body = (
        f"Load average while it ran: up to {load:.1f} on {os.cpu_count()} cores. Per clip, best of interleaved "
        "rounds. RandAugment runs in a loader worker on the uint8 clip; erasing + mixup/CutMix on the batch where it "
        "is consumed; the training step is forward + soft-target loss + "
        "backward + AdamW of the classifier (drop path 0.1; bf16 autocast on a GPU); test is the eval-mode forward "
        "of multi-view testing.\n\n"
        "| model | clip | micro-batch | RandAugment ms/clip (worker) | erasing + mixup ms/clip | train step ms/clip "
        "| test clips/s |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows)
    )
    write_section("Fine-tuning and testing" + (" (GPU)" if device.type == "cuda" else ""), body)
