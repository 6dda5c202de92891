"""Load weights safely (tensors only: `torch.load(weights_only=True)`) and map foreign layouts onto mfvideo's.

Understood layouts:
- mfvideo: our own state dicts (`backbone.*`, `mask_token`, `pred_head.*`, `head.*`), plain or under "model"/"module".
- PySlowFast: `model_state` of its MaskMViT (patch_embed.proj, cls_token, blocks.N..., mask_token,
  pred_head.transforms.0.0 / pred_head.projections.0) or of its MViT classifier (norm, head.projection).
- torchvision `mvit_v2_s`: conv_proj, pos_encoding.class_token, blocks.N.attn.{qkv,project.0,pool_q.pool,
  pool_q.norm_act.0,...}, blocks.N.mlp.{0,3}, blocks.N.project, norm, head.1.
Relative-position tables whose length differs from the model's are linearly interpolated.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

import torch
from torch import nn

from mfvideo.models.mvit import resize_rel_pos

log = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

# (pattern, replacement): the first pattern that matches a key renames it; unmatched keys stay unexpected.
TORCHVISION_RULES: List[Tuple[str, str]] = [
    (r"^conv_proj\.", "backbone.patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "backbone.cls_token"),
    (r"^blocks\.(\d+)\.attn\.project\.0\.", r"backbone.blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.attn\.pool_([qkv])\.pool\.", r"backbone.blocks.\1.attn.pool_\2."),
    (r"^blocks\.(\d+)\.attn\.pool_([qkv])\.norm_act\.0\.", r"backbone.blocks.\1.attn.norm_\2."),
    (r"^blocks\.(\d+)\.mlp\.0\.", r"backbone.blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.3\.", r"backbone.blocks.\1.mlp.fc2."),
    (r"^blocks\.(\d+)\.project\.", r"backbone.blocks.\1.proj."),
    (r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.rel_pos_[thw])\b", r"backbone.blocks.\1.\2"),
    (r"^norm\.", "head.norm."),
    (r"^head\.1\.", "head.proj."),
]

PYSLOWFAST_RULES: List[Tuple[str, str]] = [
    (r"^patch_embed\.proj\.", "backbone.patch_embed.proj."),
    (r"^cls_token$", "backbone.cls_token"),
    (r"^blocks\.", "backbone.blocks."),
    (r"^mask_token$", "mask_token"),
    (r"^pred_head\.transforms\.0\.0\.", "pred_head.norm."),
    (r"^pred_head\.projections\.0\.", "pred_head.proj."),
    (r"^norm\.", "head.norm."),
    (r"^head\.projection\.", "head.proj."),
]

# Fixed (not learned) tensors such as HOG filters: never reported as missing or unexpected.
FIXED_PREFIXES = ("hog.", "hogs.")
REL_POS_KEY = re.compile(r"\.attn\.rel_pos_[thw]$")


@dataclass
class LoadReport:
    source: str  # mfvideo | pyslowfast | torchvision
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # model keys the checkpoint did not provide
    unexpected: List[str] = field(default_factory=list)  # checkpoint keys (mapped) the model has no place for
    resized: List[str] = field(default_factory=list)  # rel-pos tables interpolated to the model's length
    replaced: List[str] = field(default_factory=list)  # a new head's tensors of another shape, left at init

    def summary(self) -> str:
        parts = [f"{len(self.loaded)} tensors loaded from a {self.source} checkpoint"]
        for name in ("missing", "unexpected", "resized", "replaced"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        return "; ".join(parts)


class CheckpointMismatch(ValueError):
    """Weights that cannot go into the model: unreadable as tensors, tensors missing or of another shape; the message
    names the file and the tensors."""


def read_checkpoint(path: Union[str, Path]) -> StateDict:
    """Tensors of a checkpoint file; refuses pickled objects other than tensors and plain containers."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # unpickling refused or corrupt file: say which file
        raise CheckpointMismatch(f"cannot read checkpoint {path} as tensors only: {e}") from e
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: object, origin: str = "checkpoint") -> StateDict:
    """The state dict inside a training checkpoint ("model_state", "model", "module", "state_dict"), prefixes
    left by DataParallel/DDP ("module.") removed."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{origin}: expected a dict of tensors, got {type(obj).__name__}")
    for key in ("model_state", "model", "module", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"{origin}: entry {key!r} is a {type(value).__name__}, not a tensor; top-level keys: {sorted(obj)[:10]}"
            )
        state[key[len("module.") :] if key.startswith("module.") else key] = value
    return state


def detect_layout(state: Mapping[str, torch.Tensor]) -> str:
    if "conv_proj.weight" in state:
        return "torchvision"
    if any(k.startswith("backbone.") for k in state):
        return "mfvideo"
    if "patch_embed.proj.weight" in state:
        return "pyslowfast"
    raise ValueError(
        f"unknown checkpoint layout (not mfvideo, PySlowFast or torchvision); first keys: {sorted(state)[:8]}"
    )


def rename(state: Mapping[str, torch.Tensor], rules: List[Tuple[str, str]]) -> StateDict:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            new_key, hits = re.subn(pattern, replacement, key)
            if hits:
                key = new_key
                break
        out[key] = value
    return out


def to_mfvideo_layout(state: Mapping[str, torch.Tensor]) -> Tuple[StateDict, str]:
    """Rename the keys of any understood layout to mfvideo's; returns (state dict, detected layout)."""
    layout = detect_layout(state)
    if layout == "torchvision":
        state = rename(state, TORCHVISION_RULES)
        if "backbone.cls_token" in state:  # torchvision keeps it as a C vector
            state["backbone.cls_token"] = state["backbone.cls_token"].reshape(1, 1, -1)
    elif layout == "pyslowfast":
        state = rename(state, PYSLOWFAST_RULES)
    return dict(state), layout


def fit_tensor(key: str, value: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The checkpoint tensor shaped for the model: equal shapes pass, rel-pos tables are interpolated."""
    if value.shape == target.shape:
        return value, False
    if REL_POS_KEY.search(key) and value.dim() == 2 and value.shape[1] == target.shape[1]:
        return resize_rel_pos(value.float(), target.shape[0]).to(target.dtype), True
    raise CheckpointMismatch(
        f"{key}: checkpoint shape {tuple(value.shape)} does not fit the model's {tuple(target.shape)} "
        "(another arch? torchvision and supervised MViTv2 weights need model.dim_mul_in_att=true, "
        "MaskFeat ones false)"
    )


def load_state(
    model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = False, replaceable: Tuple[str, ...] = ()
) -> LoadReport:
    """Map `state` onto `model` (in place). strict: raise when any learned key is missing or unexpected. Tensors
    under `replaceable` (a new head) whose shape differs from the model's, e.g. a Kinetics-400 classifier's head
    loaded for SSv2's 174 classes, keep the model's initialisation (`replaced`, counted as missing)."""
    state, layout = to_mfvideo_layout(state)
    own = model.state_dict()
    report = LoadReport(layout)
    fitted = {}
    for key, value in state.items():
        if key.startswith(FIXED_PREFIXES):
            continue
        if key not in own:
            report.unexpected.append(key)
            continue
        if key.startswith(replaceable) and value.shape != own[key].shape:
            report.replaced.append(key)
            continue
        fitted[key], resized = fit_tensor(key, value, own[key])
        report.loaded.append(key)
        if resized:
            report.resized.append(key)
    report.missing = [k for k in own if k not in fitted and not k.startswith(FIXED_PREFIXES)]
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"strict load failed: {report.summary()}")
    model.load_state_dict(fitted, strict=False)
    return report


def load_pretrained(model: nn.Module, path: Union[str, Path], allowed_missing: Tuple[str, ...] = ()) -> LoadReport:
    """Load a checkpoint file into `model`, logging what was unexpected or interpolated.

    Every tensor of the model must come from the checkpoint except those under `allowed_missing` (a new head,
    which keeps its initialisation); anything else missing is a ValueError naming the file and the tensors, never a
    silent partial load. Classification from a pretraining checkpoint: `mask_token` and `pred_head.*` are
    unexpected (dropped) and `head.*` is missing — the intended outcome with allowed_missing=("head.",); from a
    classifier of another class count, its `head.proj` is replaced (left at init) and the rest of the head loads."""
    try:
        report = load_state(model, read_checkpoint(path), replaceable=allowed_missing)
    except CheckpointMismatch as err:
        if str(path) in str(err):
            raise
        raise CheckpointMismatch(f"checkpoint {path}: {err}") from None
    missing = [key for key in report.missing if not key.startswith(allowed_missing)]
    if missing:
        raise CheckpointMismatch(
            f"checkpoint {path} does not fit the model: {len(missing)} of its "
            f"{len(model.state_dict())} tensors are missing ({', '.join(missing[:8])}"
            f"{' …' if len(missing) > 8 else ''}); {report.summary()}"
        )
    log.info("%s: %s", path, report.summary())
    return report
