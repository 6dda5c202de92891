"""Runs the real trainer (tiny model of the recipe's task, real DeepSpeed) on a synthetic, world-size-invariant clip
stream.

Launched by tests under torchrun / plain python: `python tests/engine_harness.py RECIPE [key=value ...]`.
Sample i of an epoch is a fixed random clip with a cube mask (pretraining) or a label it shows (classification),
drawn from (seed, epoch, i), and optimizer step s always covers samples [s·G, (s+1)·G) whatever the world size and
accumulation; the task's batch augmentation (mixup, CutMix, erasing) draws from the micro-batch's first sample
index. So runs with different numbers of processes must produce the same per-step losses. Batches go to the current
CUDA device where there is one, as the loader's do (then the trainer runs on the GPU over NCCL: tests/test_gpu.py).
`harness.nan_steps=[...]` makes the loss of those optimizer steps (1-based) non-finite, to exercise the skipping logic.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist

from mfvideo.app.run import training_parts
from mfvideo.config import load_recipe_or_exit
from mfvideo.data.transforms import Normalise
from mfvideo.engine.trainer import train
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks import classify


class SyntheticClips:
    def __init__(self, recipe, micro_batch_size: int, rank: int, world_size: int, num_samples: int = 48):
        self.data, self.micro, self.rank, self.world = recipe.data, micro_batch_size, rank, world_size
        self.num_samples, self.seed = num_samples, recipe.train.seed
        self.num_classes = recipe.model.num_classes if recipe.model.task == "classify" else 0
        self.masks = (
            None
            if self.num_classes
            else build_mask_generator(
                recipe.mask.mode,
                mask_grid(recipe.data.num_frames, recipe.data.crop_size),
                ratio=recipe.mask.ratio,
                min_units=recipe.mask.min_units,
            )
        )
        self.augment = classify.mixing(recipe) if self.num_classes else None
        self.normalise = Normalise(recipe.data.mean, recipe.data.std)
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.num_samples // (self.micro * self.world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def sample(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        shape = (3, self.data.num_frames, self.data.crop_size, self.data.crop_size)
        if self.masks is not None:  # pretraining: the uint8 clip (the HOG target's input) and its normalised copy
            pixels = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
            return {
                "video": self.normalise(pixels[None])[0],
                "pixels": pixels,
                "mask": torch.from_numpy(self.masks(rng)),
            }
        video = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        label = int(rng.integers(self.num_classes))
        video[label % 3] += 1.0 + label // 3  # the class is visible in the clip, so the loss can fall
        return {"video": video, "label": torch.tensor(label)}

    def __iter__(self):
        while self.position < len(self):
            first = (self.position * self.world + self.rank) * self.micro
            samples = [self.sample(first + k) for k in range(self.micro)]
            batch = {name: torch.stack([s[name] for s in samples]) for name in samples[0]}
            batch["key"] = [f"s{first + k}" for k in range(self.micro)]
            if self.augment is not None:
                batch = self.augment(batch, np.random.default_rng([self.seed, self.epoch, first]))
            if torch.cuda.is_available():  # where the loader puts its batches (mfvideo.data.loader.StreamLoader)
                device = torch.device("cuda", torch.cuda.current_device())
                batch = {name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}
            self.position += 1
            yield batch


class NanAtSteps(torch.nn.Module):
    """Wraps a model so that the loss of chosen optimizer steps is NaN (counted by forward calls)."""

    def __init__(self, model: torch.nn.Module, nan_steps: set[int], accumulation: int):
        super().__init__()
        self.model, self.nan_steps, self.accumulation = model, nan_steps, accumulation
        self.calls = 0
        self.num_layers = model.num_layers
        self.layer_id = lambda name: model.layer_id(name.removeprefix("model."))

    def forward(self, batch):
        out = self.model(batch)
        self.calls += 1
        if (self.calls - 1) // self.accumulation + 1 in self.nan_steps:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("harness.") and not a.startswith("--local_rank")]
    nan_steps = {
        int(s)
        for a in sys.argv[1:]
        if a.startswith("harness.nan_steps=")
        for s in a.split("=", 1)[1].strip("[]").split(",")
        if s
    }
    recipe = load_recipe_or_exit(args[0], args[1:])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accumulation = recipe.train.global_batch_size // (recipe.train.micro_batch_size * world)

    parts = training_parts(recipe)

    def model():
        built = parts.model()
        return NanAtSteps(built, nan_steps, accumulation) if nan_steps else built

    train(
        recipe,
        replace(
            parts, model=model, loader=lambda micro, info: SyntheticClips(recipe, micro, info.rank, info.world_size)
        ),
    )
    # what the run ran on, for the tests that must know (tests/test_gpu.py): the process group outlives train()
    print(f"harness: process group backend {dist.get_backend()}", file=sys.stderr)


if __name__ == "__main__":
    main()
