"""Using a trained model: `mfvideo.load(path)` in Python, `tools/predict.py` and `tools/extract.py` on the command
line, all through `LoadedModel`.

A checkpoint that mfvideo writes (`model.pt`, `model_best.pt`) carries a record beside its weights (`checkpoint_record`,
under the key "meta"): the resolved recipe, the task and architecture, the clip geometry, mean and std, the class
names of the training split in index order, the mfvideo version and commit, and the training step. Everything in it
is a plain value, so `torch.load(weights_only=True)` reads it. From it a checkpoint alone rebuilds its model and the
test-time clips; a recipe given as well wins over the record's (and overrides win over both). A checkpoint without a
record takes its recipe from the one given (imported PySlowFast or torchvision weights), or, written by mfvideo
before records existed, from the recipe saved inside it, with a notice; class names are then unknown (indices).

A video is read whole from its file (any container PyAV opens; .jpg/.jpeg/.png as single-frame videos) and cut into
the views `tools/test.py` takes: the same clip maker (`mfvideo.tasks.<task>.eval_batching`) and device steps, the
same softmax scores averaged over the views in view order (`mfvideo.evaluation.classification.video_scores`). So a
video that is also in a val shard gets the probabilities of its row in `predictions.jsonl`.
"""

from __future__ import annotations

import json
import logging
import subprocess
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from mfvideo.config import Recipe, load_recipe, recipe_from_text, recipe_to_yaml
from mfvideo.data.collate import Collate
from mfvideo.data.decode import IMAGE_EXTENSIONS, DecodedMedia, DecodeError, open_media
from mfvideo.data.loader import Batching
from mfvideo.data.tarstream import RawSample
from mfvideo.engine.trainer import uses_bf16
from mfvideo.evaluation.classification import video_scores
from mfvideo.models.checkpoint import load_state, unwrap_state_dict
from mfvideo.tasks import Views, build_model, classify, task_of
from mfvideo.tasks.common import split_classes, temporal

log = logging.getLogger("mfvideo.inference")

RECORD_KEY = "meta"
RECORD_FORMAT = 1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file."""


class NotAVideo(ValueError):
    """A file that no decoder opens; the message names it."""


def source_commit() -> Optional[str]:
    """The git commit of the mfvideo source tree (with "+dirty" when it has changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def installed_version() -> Optional[str]:
    try:
        return metadata.version("mfvideo")
    except metadata.PackageNotFoundError:
        return None


def checkpoint_record(recipe: Recipe) -> dict[str, Any]:
    """The record a checkpoint of `recipe` carries beside its weights (module docstring); the engine adds "step"."""
    data = recipe.data
    try:
        class_names = split_classes(data, data.train, data.train_manifest)
    except (OSError, ValueError):
        class_names = []
    return {
        "format": RECORD_FORMAT,
        "recipe": recipe_to_yaml(recipe),
        "task": recipe.model.task,
        "arch": recipe.model.arch,
        "num_classes": recipe.model.num_classes,
        "num_frames": data.num_frames,
        "sampling_rate": data.sampling_rate,
        "crop_size": data.crop_size,
        "test_short_side": data.test_short_side,
        "mean": list(data.mean),
        "std": list(data.std),
        "class_names": class_names,
        "mfvideo_version": installed_version(),
        "commit": source_commit(),
    }


@dataclass(frozen=True)
class Prediction:
    """One file's classes: `top` holds (class index, class name, probability averaged over the views), best first."""

    file: str
    top: list[tuple[int, str, float]]
    num_views: int
    note: str = ""

    def as_json(self) -> dict:
        return {
            "file": self.file,
            "top5": [list(entry) for entry in self.top],
            "num_views": self.num_views,
            **({"note": self.note} if self.note else {}),
        }


@dataclass(frozen=True)
class BoxPrediction:
    """One person box of a keyframe: its box normalised to the frame (x1, y1, x2, y2) and its actions, (action id,
    name, probability), best first."""

    file: str
    timestamp: int
    box: tuple[float, float, float, float]
    actions: list[tuple[int, str, float]]

    def as_json(self) -> dict:
        return {
            "file": self.file,
            "timestamp": self.timestamp,
            "box": list(self.box),
            "actions": [list(entry) for entry in self.actions],
        }


def read_media(path: str | Path) -> tuple[DecodedMedia, RawSample]:
    """The file's decoded media and a sample standing for it (key: the file's stem); NotAVideo naming the file when
    nothing decodes it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise NotAVideo(f"{path}: cannot read: {err.strerror or err}") from None
    extension = IMAGE_EXTENSIONS[0] if path.suffix.lower() in IMAGE_SUFFIXES else "mp4"
    try:
        media = open_media(data, extension)
    except DecodeError as err:
        raise NotAVideo(f"{path}: not a video or image that can be decoded ({err})") from None
    return media, RawSample(path.stem, {extension: data, "json": b"{}"}, str(path), 0, 0)


class LoadedModel:
    """A model with its recipe and record, in eval mode on `device`: `predict` and `features` on video files."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, record: dict, device: torch.device, path: str):
        self.model, self.recipe, self.record, self.path = model, recipe, record, path
        self.task = task_of(recipe)
        self.class_names = list(record.get("class_names") or [])
        self.to(device)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.path!r}: {self.recipe.model.task} {self.recipe.model.arch}, "
            f"{self.recipe.data.num_frames}×{self.recipe.data.crop_size}², step {self.record.get('step')})"
        )

    def class_name(self, index: int) -> str:
        return self.class_names[index] if index < len(self.class_names) else str(index)

    # ----- views ----------------------------------------------------------------------------------------------
    def short_clip_note(self, media: DecodedMedia) -> str:
        data = self.recipe.data
        span = data.num_frames * data.sampling_rate if data.sampling == "random" else data.num_frames
        if media.num_frames >= span:
            return ""
        return (
            f"{media.num_frames} frames, fewer than a clip's {span}: sampled as tools/test.py samples short "
            f"videos (edge frames repeated)"
        )

    def run(self, batches: Iterable[dict], steps, apply) -> Iterator[tuple[dict, Any]]:
        """(batch on the device after the task's device steps, `apply(batch)` in eval mode without gradients)."""
        for batch in batches:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            for step in steps:
                batch = step(batch, None)
            with (
                torch.no_grad(),
                torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype or torch.float32,
                    enabled=self.autocast_dtype is not None,
                ),
            ):
                yield batch, apply(batch)

    def to(self, device: torch.device) -> "LoadedModel":
        self.model.to(device)
        self.device = device
        self.autocast_dtype = torch.bfloat16 if device.type == "cuda" and uses_bf16(self.recipe) else None
        return self

    def feature_batching(self, views: Views) -> Batching:
        """The clips features are pooled from, for every task: the classification test's (`views.clips` temporal
        views × `views.crops` crops of `data.crop_size`²)."""
        return classify.eval_batching(self.recipe, views)

    def class_batching(self, views: Views) -> Batching:
        """The test-time clips of a classification model: those of tools/test.py."""
        return self.task.eval_batching(self.recipe, views)

    def _views(self, video: str | Path, batch_size: Optional[int], features: bool = False):
        media, sample = read_media(video)
        views = Views(self.recipe.data.test_clips, self.recipe.data.test_crops)
        batching = self.feature_batching(views) if features else self.class_batching(views)
        clips = batching.clip_maker(media, None, sample)
        size = batch_size or self.recipe.train.micro_batch_size
        # video and key only: the slice's collate also asks for labels, which a user's file does not have
        batches = (Collate()([(sample, clip) for clip in clips[i : i + size]]) for i in range(0, len(clips), size))
        order = torch.tensor([clip.view for clip in clips]).argsort()
        return media, batches, batching.device_steps, order

    # ----- what a user calls ------------------------------------------------------------------------------------
    def predict(
        self,
        video: str | Path,
        boxes: Optional[dict[int, Sequence[Sequence[float]]]] = None,
        top_k: int = 5,
        batch_size: Optional[int] = None,
    ):
        """Classification: a `Prediction` (top `top_k` classes, probabilities averaged over the test views).
        Detection: a list of `BoxPrediction`, one per box of `boxes` ({timestamp in whole seconds from the start of
        the file: [[x1, y1, x2, y2] normalised to the frame, ...]}). A pretraining model has no head to predict
        with: ValueError."""
        if self.recipe.model.task == "pretrain":
            raise ValueError(
                f"{self.path} is a MaskFeat pretraining checkpoint: it predicts HOG, not classes; "
                f"fine-tune it first (its features work: LoadedModel.features)"
            )
        if self.recipe.model.task == "detect":
            if not boxes:
                raise ValueError(
                    "a detection model scores the actions of given person boxes: pass boxes "
                    "({timestamp: [[x1, y1, x2, y2], ...]}, normalised to the frame)"
                )
            return self.predict_boxes(video, boxes, top_k)
        media, batches, steps, order = self._views(video, batch_size)
        logits = [out["logits"] for _, out in self.run(batches, steps, self.model)]
        probabilities = torch.softmax(torch.cat(logits).to("cpu", torch.float32), dim=1)[order]
        classes, scores = video_scores(probabilities, top_k)
        top = [(c, self.class_name(c), s) for c, s in zip(classes, scores)]
        return Prediction(str(video), top, len(order), self.short_clip_note(media))

    def features(
        self, video: str | Path | torch.Tensor, per_view: bool = False, batch_size: Optional[int] = None
    ) -> torch.Tensor:
        """Pooled backbone features (float32, on the CPU): of a video file, D averaged over its test views (V×D in
        view order with `per_view`); of a normalised B×3×T×H×W tensor, B×D."""

        def pooled(batch: dict) -> torch.Tensor:
            return self.model.features(batch["video"]).to("cpu", torch.float32)

        if torch.is_tensor(video):
            return next(self.run(iter([{"video": video}]), (), pooled))[1]
        _, batches, steps, order = self._views(video, batch_size, features=True)
        views = torch.cat([out for _, out in self.run(batches, steps, pooled)])[order]
        return views if per_view else views.mean(dim=0)

    def predict_boxes(
        self, video: str | Path, boxes: dict[int, Sequence[Sequence[float]]], top_k: int = 5
    ) -> list[BoxPrediction]:
        """The actions of each given box, keyframe by keyframe: the detection test's full-frame clip centred on the
        keyframe, the boxes as its RoIs (boxes without area are dropped, as the test drops them)."""
        media, sample = read_media(video)
        recipe = replace(
            self.recipe,
            data=replace(self.recipe.data, detection=replace(self.recipe.data.detection, test_boxes="ground_truth")),
        )
        batching = self.task.eval_batching(recipe, Views(1, 1))
        results = []
        for timestamp in sorted(boxes):
            rows = [list(map(float, box)) for box in boxes[timestamp]]
            meta = {
                "video_id": sample.key,
                "timestamp": int(timestamp),
                "keyframe_sec": float(timestamp),
                "boxes": rows,
                "labels": [[] for _ in rows],
            }
            keyframe = RawSample(sample.key, {**sample.parts, "json": json.dumps(meta).encode()}, sample.shard, 0, 0)
            (clip,) = batching.clip_maker(media, None, keyframe)
            batch = batching.collate([(keyframe, clip)])
            ((_, out),) = self.run(iter([batch]), batching.device_steps, self.model)
            scores = out["scores"].to("cpu", torch.float32)
            for box, row in zip(clip.boxes.normalised.tolist(), scores):
                order = torch.sort(row, descending=True, stable=True).indices[:top_k].tolist()
                actions = [(c + 1, self.class_name(c), float(row[c])) for c in order]
                results.append(BoxPrediction(str(video), int(timestamp), tuple(box), actions))
        return results

    def keyframe_frames(self, media: DecodedMedia, timestamp: float) -> np.ndarray:
        """Every frame from the first to the last of the clip centred on `timestamp` (uint8 T×H×W×3, the file's
        own size): the stretch of video a detection clip samples, for drawing."""
        indices = temporal(self.recipe.data).centred(media, float(timestamp))
        return media.frames(np.arange(indices.min(), indices.max() + 1)).numpy()


def load_model(
    path: str | Path,
    recipe: Optional[str | Path] = None,
    overrides: Sequence[str] = (),
    device: Optional[str | torch.device] = None,
) -> LoadedModel:
    """The model of checkpoint `path`, described by its record or by `recipe` (module docstring), every tensor
    loaded, in eval mode on `device` (default: the current CUDA device when there is one, else the CPU).
    CheckpointError naming the file when it cannot be read as tensors, has neither record nor recipe, or does not
    fit the model."""
    path = str(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as err:  # refused unpickling or a corrupt file: name it
        raise CheckpointError(f"cannot read checkpoint {path} as tensors and plain values: {err}") from None
    record = dict(saved.get(RECORD_KEY) or {}) if isinstance(saved, dict) else {}
    if recipe is not None:
        resolved = load_recipe(recipe, list(overrides))
        if not record:
            record = {**checkpoint_record(resolved), "imported": True}
    elif record:
        resolved = recipe_from_text(record["recipe"], f"the record of {path}", overrides)
    elif isinstance(saved, dict) and isinstance(saved.get("recipe"), str):
        log.warning(
            "%s has no metadata record (written by mfvideo before checkpoints described themselves): its "
            "model is rebuilt from the recipe saved inside it, its class names read from that recipe's training "
            "split when its manifest can be read (else indices are shown)",
            path,
        )
        resolved = recipe_from_text(saved["recipe"], f"the recipe saved in {path}", overrides)
        record = {**checkpoint_record(resolved), "mfvideo_version": None, "commit": None, "step": None}
    else:
        raise CheckpointError(
            f"{path} has no metadata record and no recipe was given: name the recipe it was "
            f"trained with (--recipe RECIPE, or mfvideo.load(path, recipe=...))"
        )
    model = build_model(replace(resolved.model, init=None), resolved.data.num_frames, resolved.data.crop_size)
    report = load_state(model, unwrap_state_dict(saved, path))
    if report.missing:
        raise CheckpointError(
            f"{path} does not fit the {resolved.model.task} model of {resolved.model.arch}: "
            f"{len(report.missing)} tensors missing ({', '.join(report.missing[:6])}); "
            f"{report.summary()}"
        )
    device = (
        torch.device(device)
        if device is not None
        else (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
    )
    return LoadedModel(model.to(device).eval(), resolved, record, device, path)
