"""The k-NN probe of a frozen backbone: how well its clip features separate a labelled split, with no training.

A probe embeds two labelled splits with `model.features(video)` (B×D, the backbone on whole clips) and classifies
every video of the second by a weighted vote of its nearest neighbours in the first, as DINO's k-NN monitor does:

    features    standardised per channel with the train split's mean and standard deviation (`standardised`)
    similarity  cosine of the L2-normalised features
    neighbours  the k train videos most similar to a query (all of them when there are fewer than k)
    vote        each neighbour adds exp(similarity / temperature) to its class; the scores are the votes per class

`knn_probe` is the one call the training loop makes every `train.probe_every` epochs of pretraining (and
`tools/probe.py` on saved weights); `embed_split`, `knn_scores` and `topk_accuracy` are its stages.

The splits come from `mfvideo.data.loader.build_test_loader(..., fields=("label", "view"))`: every video once over
all ranks, with all its views on one rank, and slots short of data repeating views (the first arrival of a
(video_index, view) pair counts). A video's feature is the mean of its views' features. Every rank embeds its share
and the splits are gathered once at the end, so every rank holds the same full split and computes the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

# Channels whose train standard deviation is below this are only centred (they carry nothing to scale up).
MIN_STD = 1e-6
# Query rows scored at once are chosen so that their similarity matrix (rows × train videos) holds at most this many
# entries (64 MiB of float32): memory stays bounded whatever the size of the splits.
QUERY_CHUNK_ELEMENTS = 1 << 24


@dataclass
class EmbeddedSplit:
    """A labelled split through the backbone, one row per video in video_index order (pattern order)."""

    features: torch.Tensor  # float32 N×D on the CPU: the mean of the video's views' features
    labels: torch.Tensor  # int64 N, the videos' class indices
    keys: list[str]  # the videos' sample keys


def standardised(train_features: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The train features and `others` centred and scaled per channel by the train split's statistics.

    DINO scores the output of a final norm. A MaskFeat backbone has none (its heads carry the norms), and a small
    pretrained one carries a large constant vector in every token, with a few loud channels: after the demo's
    pretraining (docs/demo.md, seed 0) the pooled features' mean is 14 times their spread between clips (3 times
    untrained), and the cosine of raw features ranks neighbours by those channels. Measured there (8 classes,
    chance 12.5 %): k-NN top-1 14.2 % on raw features, 26.2 % standardised (14.2 % for the untrained model)."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0) if len(train_features) > 1 else torch.ones_like(mean)
    std = torch.where(std > MIN_STD, std, torch.ones_like(std))
    return tuple(
        (features - mean.to(features.device)) / std.to(features.device) for features in (train_features, *others)
    )


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    query_features: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Q×num_classes weighted k-NN votes (module docstring) of each query row among the train rows, float32 on the
    queries' device. `k` larger than the train split uses all of it. Queries are scored in chunks
    (`QUERY_CHUNK_ELEMENTS`), so memory holds one chunk's similarities, never all Q×N."""
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            f"features must be N×D and Q×D with the same D, got train {tuple(train_features.shape)} "
            f"and query {tuple(query_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train labels of shape {tuple(train_labels.shape)} for {train_features.shape[0]} train features"
        )
    if train_features.shape[0] == 0:
        raise ValueError("the train split is empty: a k-NN vote needs at least one labelled neighbour")
    if num_classes < 1 or k < 1 or temperature <= 0:
        raise ValueError(
            f"num_classes and k must be positive and temperature above 0, got {num_classes}, {k}, {temperature}"
        )
    if int(train_labels.min()) < 0 or int(train_labels.max()) >= num_classes:
        raise ValueError(
            f"train labels span {int(train_labels.min())}..{int(train_labels.max())}, outside 0..{num_classes - 1}"
        )
    device = query_features.device
    train = F.normalize(train_features.to(device, torch.float32), dim=1)
    labels = train_labels.to(device, torch.int64)
    k = min(k, train.shape[0])
    scores = torch.zeros(query_features.shape[0], num_classes, device=device)
    rows = max(1, QUERY_CHUNK_ELEMENTS // train.shape[0])
    for start in range(0, query_features.shape[0], rows):
        queries = F.normalize(query_features[start : start + rows].to(torch.float32), dim=1)
        similarity, neighbours = (queries @ train.T).topk(k, dim=1)
        scores[start : start + rows].scatter_add_(1, labels[neighbours], (similarity / temperature).exp())
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{"top<k>": percent of rows whose label is among their k best-scored classes} for each k in `ks`; a k above
    the number of classes counts them all (100 %). Among equal scores the lower class index ranks first."""
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be Q×C and labels Q, got {tuple(scores.shape)} and {tuple(labels.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("no query to score: the accuracy of an empty split is undefined")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = order == labels.to(order.device)[:, None]
    return {f"top{k}": 100.0 * hits[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def embed_split(model: torch.nn.Module, loader) -> EmbeddedSplit:
    """Every video of `loader` (a test loader with fields ("label", "view")) through `model.features`, in eval mode
    (the model's mode is restored afterwards), the views of a video averaged. Collective under torch.distributed
    with several processes (every rank must call it; one `all_gather_object` at the end): every rank returns the
    same full split."""
    was_training = model.training
    model.eval()
    views: dict[int, dict[int, torch.Tensor]] = {}  # video_index -> view -> float32 D
    identity: dict[int, tuple[str, int]] = {}  # video_index -> (key, label)
    try:
        for batch in loader:
            features = model.features(batch["video"]).to("cpu", torch.float32)
            for row, (index, view, label, key) in enumerate(
                zip(batch["video_index"].tolist(), batch["view"].tolist(), batch["label"].tolist(), batch["key"])
            ):
                known = identity.setdefault(index, (key, label))
                if known != (key, label):
                    raise ValueError(
                        f"video_index {index} arrived as {known[0]!r} (label {known[1]}) and as {key!r} (label {label})"
                    )
                views.setdefault(index, {}).setdefault(view, features[row].clone())  # a repeat keeps the first
    finally:
        model.train(was_training)
    # Views are averaged in view order: the feature does not depend on the order the batches arrived in.
    local = {
        index: (*identity[index], torch.stack([seen[v] for v in sorted(seen)]).mean(dim=0))
        for index, seen in views.items()
    }
    merged: dict[int, tuple[str, int, torch.Tensor]] = {}
    for part in _gathered(local):
        for index, video in part.items():
            merged.setdefault(index, video)
    if not merged:
        raise ValueError("the probe loader yielded no video: nothing to embed")
    order = sorted(merged)
    return EmbeddedSplit(
        features=torch.stack([merged[i][2] for i in order]),
        labels=torch.tensor([merged[i][1] for i in order], dtype=torch.int64),
        keys=[merged[i][0] for i in order],
    )


def _gathered(local: Any) -> list[Any]:
    """Every rank's `local`, in rank order (just [local] without a process group of several ranks)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def knn_probe(
    model: torch.nn.Module, train_loader, val_loader, num_classes: int, k: int = 20, temperature: float = 0.07
) -> dict[str, Any]:
    """Embed both splits (`embed_split`, collective), standardise them (`standardised`) and score the val videos by
    their k nearest train videos:
    {"top1", "top5" (percent), "num_train", "num_val" (videos)}, the same on every rank. The vote runs on the CUDA
    device when there is one."""
    train = embed_split(model, train_loader)
    val = embed_split(model, val_loader)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    train_features, val_features = standardised(train.features, val.features.to(device))
    scores = knn_scores(train_features, train.labels, val_features, num_classes, k, temperature)
    return {**topk_accuracy(scores, val.labels), "num_train": len(train.keys), "num_val": len(val.keys)}
