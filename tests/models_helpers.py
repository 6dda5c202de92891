"""Fixtures for the model tests: real encoded clips (PyAV, H.264) and torchvision's mvit_v2_s state-dict layout."""

from __future__ import annotations

import io
import math
from typing import Dict, Tuple

import av
import numpy as np
import torch

MEAN, STD = 0.45, 0.225


def moving_square_frames(num_frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """T×H×W×3 uint8: a textured background and a bright square moving diagonally."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 90, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width]
    side = max(height, width) // 4
    frames = np.repeat(background[None], num_frames, axis=0)
    for t in range(num_frames):
        y, x = (3 * t) % (height - side), (2 * t + 5) % (width - side)
        frames[t, y : y + side, x : x + side] = rng.integers(150, 255, size=3, dtype=np.uint8)
    return frames


def encode_h264(frames: np.ndarray, fps: int = 30) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def encoded_pixels(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """3×T×H×W uint8 clip decoded from real H.264 (what the loader ships)."""
    frames = decode(encode_h264(moving_square_frames(num_frames, height, width, seed)))
    assert frames.shape == (num_frames, height, width, 3), frames.shape
    return torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 normalised like the loader's (mean 0.45, std 0.225)."""
    return (pixels.float().div(255) - MEAN) / STD


def pixel_batch(batch: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """B×3×T×H×W uint8, clip i decoded from its own real H.264 video."""
    return torch.stack([encoded_pixels(num_frames, height, width, seed=i) for i in range(batch)])


def clip_batch(batch: int, num_frames: int, height: int, width: int) -> torch.Tensor:
    """B×3×T×H×W float32, normalised: the backbone's input."""
    return normalise(pixel_batch(batch, num_frames, height, width))


# torchvision/models/video/mvit.py, mvit_v2_s: per-block settings as listed there (block i of 16).
TV_HEADS = [1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8]
TV_IN = [96, 96, 192, 192] + [384] * 11 + [768]
TV_OUT = [96, 192, 192, 384] + [384] * 10 + [768, 768]
TV_STRIDE_Q = [(1, 2, 2) if i in (1, 3, 14) else (1, 1, 1) for i in range(16)]
TV_STRIDE_KV = [(1, 8, 8), (1, 4, 4), (1, 4, 4)] + [(1, 2, 2)] * 11 + [(1, 1, 1)] * 2


def torchvision_mvit_v2_s_shapes(num_classes: int = 400) -> Dict[str, Tuple[int, ...]]:
    """Key → shape of torchvision's mvit_v2_s state dict (rel-pos embeddings, projection after attention), built
    from torchvision's construction rules: Pool(conv, norm) modules, `project` Sequential, MLP(0: Linear,
    3: Linear), rel-pos tables sized from max(H, W) of the block's input grid at 16×224²."""
    shapes: Dict[str, Tuple[int, ...]] = {
        "conv_proj.weight": (96, 3, 3, 7, 7),
        "conv_proj.bias": (96,),
        "pos_encoding.class_token": (96,),
    }
    t, size = 8, 56
    for i in range(16):
        dim_in, dim, heads = TV_IN[i], TV_OUT[i], TV_HEADS[i]
        head_dim = dim // heads
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "norm1.weight": (dim_in,),
                p + "norm1.bias": (dim_in,),
                p + "norm2.weight": (dim,),
                p + "norm2.bias": (dim,),
                p + "attn.qkv.weight": (3 * dim, dim_in),
                p + "attn.qkv.bias": (3 * dim,),
                p + "attn.project.0.weight": (dim, dim),
                p + "attn.project.0.bias": (dim,),
                p + "mlp.0.weight": (4 * dim, dim),
                p + "mlp.0.bias": (4 * dim,),
                p + "mlp.3.weight": (dim, 4 * dim),
                p + "mlp.3.bias": (dim,),
            }
        )
        for name in "qkv":
            shapes[p + f"attn.pool_{name}.pool.weight"] = (head_dim, 1, 3, 3, 3)
            shapes[p + f"attn.pool_{name}.norm_act.0.weight"] = (head_dim,)
            shapes[p + f"attn.pool_{name}.norm_act.0.bias"] = (head_dim,)
        spatial = 2 * max(size // TV_STRIDE_Q[i][1], size // TV_STRIDE_KV[i][1]) - 1
        shapes.update(
            {
                p + "attn.rel_pos_h": (spatial, head_dim),
                p + "attn.rel_pos_w": (spatial, head_dim),
                p + "attn.rel_pos_t": (2 * t - 1, head_dim),
            }
        )
        if dim_in != dim:
            shapes.update({p + "project.weight": (dim, dim_in), p + "project.bias": (dim,)})
        size //= TV_STRIDE_Q[i][1]
    shapes.update(
        {"norm.weight": (768,), "norm.bias": (768,), "head.1.weight": (num_classes, 768), "head.1.bias": (num_classes,)}
    )
    return shapes


def random_state(shapes: Dict[str, Tuple[int, ...]], seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def num_elements(shapes: Dict[str, Tuple[int, ...]]) -> int:
    return sum(math.prod(s) for s in shapes.values())
