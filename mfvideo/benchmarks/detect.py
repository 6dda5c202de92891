"""Action detection speed (`tools/benchmark.py detect`): the AVA detector's training step per clip, full-frame test
clips/s, and RoIAlign on its own, on this machine.

Measured in one process, interleaved rounds, best of each (the machines are shared and noisy), on synthetic batches
laid out as the detection loaders make them (mfvideo/data: `video`, `boxes` in pixels, `box_index`, `box_labels`):
- the training step per clip: forward, binary cross-entropy, backward and AdamW of `Detector` (drop path 0.2 and
  dropout 0.5 as the AVA S recipe; fp32 on CPU, bf16 autocast on a GPU) on crop² clips with `rois` boxes each;
- test clips/s: the eval-mode forward on full frames of AVA's 16:9 shape at the given short side, padded to the
  output stride as the test collate pads them (no grad);
- RoIAlign 7×7 (aligned, adaptive sampling, as the RoI head calls it) of all a batch's boxes on the head's
  feature map, at the training size measured and at the AVA recipes' (8 clips of 224²): the plain-torch version
  (`roi_align_torch`) forward and forward + backward, and torchvision's beside it where torchvision imports.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import torch

from mfvideo.benchmarks.report import write_section
from mfvideo.benchmarks.timing import best_seconds, train_and_test_jobs
from mfvideo.config.schema import ModelConfig
from mfvideo.models.detector import ROI_SIZE, SAMPLING_RATIO
from mfvideo.models.roi_align import as_rois, roi_align_torch, torchvision_roi_align
from mfvideo.tasks import build_model
from mfvideo.tasks.detect import TEST_PAD_MULTIPLE

NUM_ACTIONS = 80
FRAME_ASPECT = 16 / 9  # AVA's movies are mostly 16:9; test frames keep it (short side = height)
STRIDE = 16  # model.detection_stride of the AVA recipes
AVA_MICRO_BATCH, AVA_CROP = 8, 224  # train.micro_batch_size and data.crop_size of recipes/ava_mvit_s_ft.yaml


def person_boxes(
    clips: int, height: int, width: int, rois: int, rng: np.random.Generator, device: torch.device
) -> dict:
    """`rois` person-sized boxes per clip in pixels (a fifth to a half of the frame wide, a third to all of it high),
    their clips, and multi-hot labels with one pose and about one more action per box."""
    count = clips * rois
    w = rng.uniform(0.2, 0.5, count) * width
    h = rng.uniform(0.33, 1.0, count) * height
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    labels = rng.uniform(size=(count, NUM_ACTIONS)) < 1 / NUM_ACTIONS
    labels[np.arange(count), rng.integers(0, 14, count)] = True  # AVA's pose ids are 1..14
    return {
        "boxes": torch.tensor(np.stack([x1, y1, x1 + w, y1 + h], axis=1), dtype=torch.float32, device=device),
        "box_index": torch.arange(clips, device=device).repeat_interleave(rois),
        "box_labels": torch.tensor(labels, dtype=torch.float32, device=device),
    }


def detection_batch(
    clips: int, frames: int, height: int, width: int, rois: int, rng: np.random.Generator, device: torch.device
) -> dict:
    return {
        "video": torch.randn(clips, 3, frames, height, width, device=device),
        **person_boxes(clips, height, width, rois, rng, device),
    }


def padded(length: int) -> int:
    return math.ceil(length / TEST_PAD_MULTIPLE) * TEST_PAD_MULTIPLE


def measure_model(
    arch: str, frames: int, crop: int, test_short_side: int, batch: int, rois: int, repeats: int, device: torch.device
) -> dict:
    """Seconds per training step and per test forward of `batch` clips; the padded test frame; the head's width."""
    rng = np.random.default_rng(0)
    model_cfg = replace(
        ModelConfig(arch=arch, task="detect", num_classes=NUM_ACTIONS),
        drop_path=0.2,
        dropout=0.5,
        detection_stride=STRIDE,
    )
    model = build_model(model_cfg, frames, crop).to(device)
    train_batch = detection_batch(batch, frames, crop, crop, rois, rng, device)
    frame = [test_short_side, round(test_short_side * FRAME_ASPECT)]
    test_height, test_width = padded(frame[0]), padded(frame[1])
    test_batch = detection_batch(batch, frames, test_height, test_width, rois, rng, device)
    del test_batch["box_labels"]
    test_batch["video_size"] = [frame] * batch  # as the test collate gives them: the model crops to its stride

    best = best_seconds(
        train_and_test_jobs(model, train_batch, test_batch, device),
        repeats,
        device,
        before=lambda name: model.train(name == "train"),
    )
    return dict(best, test_size=(test_height, test_width), channels=model.backbone.dim_out)


def measure_roi_align(
    clips: int, channels: int, height: int, width: int, rois: int, repeats: int, device: torch.device
) -> dict:
    """Seconds of RoIAlign 7×7 (as the RoI head calls it) of `rois` boxes per clip on a clips×channels×height×width
    map, forward and forward + backward, per implementation: plain torch, and torchvision's where it imports."""
    rng = np.random.default_rng(0)
    boxes = person_boxes(clips, height * STRIDE, width * STRIDE, rois, rng, device)
    rois_rows = as_rois(boxes["boxes"], boxes["box_index"])
    features = torch.randn(clips, channels, height, width, device=device, requires_grad=True)
    aligners = {"torch": roi_align_torch}
    if torchvision_roi_align is not None:
        aligners["torchvision"] = torchvision_roi_align

    def forward(fn):
        @torch.no_grad()
        def run():
            fn(features, rois_rows, ROI_SIZE, 1 / STRIDE, SAMPLING_RATIO, True)

        return run

    def forward_backward(fn):
        def run():
            fn(features, rois_rows, ROI_SIZE, 1 / STRIDE, SAMPLING_RATIO, True).amax(dim=(2, 3)).sum().backward()
            features.grad = None

        return run

    jobs = {}
    for name, fn in aligners.items():
        jobs[name, "fwd"], jobs[name, "fwdbwd"] = forward(fn), forward_backward(fn)
    return best_seconds(jobs, repeats, device)


def run(args) -> None:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    sizes = args.sizes or ([("mvit_s", 16, 224, 256)] if device.type == "cuda" else [("mvit_s", 8, 112, 112)])
    rows, roi_rows, load = [], [], os.getloadavg()[0]
    for arch, frames, crop, short_side in sizes:
        frames, crop, short_side = int(frames), int(crop), int(short_side)
        t = measure_model(arch, frames, crop, short_side, args.batch, args.rois, args.repeats, device)
        test_h, test_w = t["test_size"]
        rows.append(
            f"| {arch} | {frames}×{crop}² | {args.batch} × {args.rois} | {1e3 * t['train'] / args.batch:.0f} "
            f"| {frames}×{test_h}×{test_w} | {args.batch / t['test']:.1f} |"
        )
        print(rows[-1], flush=True)
        # the head's map at this training size, and at the AVA recipes' (micro-batch 8 of 224² crops)
        for clips, side in ((args.batch, crop // STRIDE), (AVA_MICRO_BATCH, AVA_CROP // STRIDE)):
            r = measure_roi_align(clips, t["channels"], side, side, args.rois, args.repeats, device)
            for name in sorted({name for name, _ in r}):
                roi_rows.append(
                    f"| {name} | {clips}×{t['channels']}×{side}×{side} | {clips * args.rois} | "
                    f"{1e3 * r[name, 'fwd']:.2f} | {1e3 * r[name, 'fwdbwd']:.2f} |"
                )
                print(roi_rows[-1], flush=True)
    load = max(load, os.getloadavg()[0])
    where = (
        "GPU, bf16 autocast"
        if device.type == "cuda"
        else f"CPU, fp32, {torch.get_num_threads()} threads; no GPU on this machine"
    )
    body = (
        f"{where}. Load average while it ran: up to {load:.1f} on {os.cpu_count()} cores. Best of "
        f"{args.repeats} interleaved rounds. Synthetic batches as the detection loaders make them, "
        f"{args.rois} person-sized boxes per clip. The training step is forward + binary cross-entropy + backward "
        "+ AdamW of the detector (1/16 grid, RoIAlign 7×7, drop path 0.2, dropout 0.5, 80 actions); test is the "
        "eval-mode forward on full 16:9 frames at the short side given, padded as the test collate pads them, "
        "the model seeing each at the frame's size rounded up to 16 (`video_size`).\n\n"
        "| model | train clip | clips × boxes | train step ms/clip | test clip (padded) | test clips/s |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nRoIAlign 7×7 (aligned, adaptive sampling, as the RoI head calls it) of every box of a batch on the "
        "head's feature map, at the training size above and at the AVA recipes' (micro-batch 8 of 224² crops), "
        "ms per batch"
        + ("" if torchvision_roi_align is not None else " (torchvision does not import here: plain torch only)")
        + ":\n\n| implementation | feature map | boxes | forward ms | forward + backward ms |\n"
        "|---|---|---|---|---|\n" + "\n".join(roi_rows)
    )
    write_section("Detection" + (" (GPU)" if device.type == "cuda" else ""), body)
