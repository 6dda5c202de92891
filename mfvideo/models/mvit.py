"""MViTv2 backbone (Li et al. 2022) as used by MaskFeat: pooling attention with decomposed relative positions.

Layout of the parameters follows PySlowFast's names (patch_embed.proj, cls_token, blocks.N.attn.{qkv,proj,pool_q,
norm_q,rel_pos_h,...}, blocks.N.mlp.{fc1,fc2}, blocks.N.proj) so that official checkpoints map almost one to one.
Tokens are B×(1+T·H·W)×C with the cls token first; `grid` is the (T, H, W) of the non-cls tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from pytorchvideo.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint

Grid = Tuple[int, int, int]

LAYER_NORM_EPS = 1e-6
INIT_STD = 0.02
INIT_BIAS = 0.02  # biases and LayerNorm biases start at 0.02, as in PySlowFast's MViT init
HEAD_INIT_SCALE = 0.001  # a task head's Linear starts 1000× smaller (PySlowFast's MViT head init)


def init_head(norm: nn.LayerNorm, proj: nn.Linear) -> None:
    """A task head's initialisation (classification, detection): LayerNorm bias and Linear bias at INIT_BIAS, Linear
    weights truncated normal with INIT_STD, then the Linear's weights and bias scaled by HEAD_INIT_SCALE."""
    nn.init.constant_(norm.bias, INIT_BIAS)
    nn.init.trunc_normal_(proj.weight, std=INIT_STD)
    nn.init.constant_(proj.bias, INIT_BIAS)
    with torch.no_grad():
        proj.weight.mul_(HEAD_INIT_SCALE)
        proj.bias.mul_(HEAD_INIT_SCALE)


@dataclass(frozen=True)
class BlockConfig:
    """One MultiScaleBlock. Q, K and V are pooled by depthwise Conv3d(kernel) with their own strides."""

    dim_in: int
    dim_out: int
    num_heads: int
    stride_q: Grid
    stride_kv: Grid
    input_grid: Grid  # token grid entering the block at the configured input size (sizes rel-pos tables)
    dim_mul_in_att: bool  # True: channels grow in the attention (supervised MViTv2); False: in the MLP (MaskFeat)
    kernel: Grid = (3, 3, 3)
    mlp_ratio: float = 4.0
    drop_path: float = 0.0

    @property
    def attn_dim(self) -> int:
        return self.dim_out if self.dim_mul_in_att else self.dim_in


@dataclass(frozen=True)
class MViTConfig:
    """A size of MViTv2: the dims and heads double at `doubling_blocks`, where Q is strided (1,2,2) too."""

    name: str
    depth: int
    embed_dim: int
    num_heads: int
    doubling_blocks: Tuple[int, ...]
    dim_mul_in_att: bool = False
    keep_last_q_stride: bool = True  # False for MaskFeat pretraining: the output stays at 1/16 resolution
    kv_stride_adaptive: Grid = (1, 8, 8)
    patch_kernel: Grid = (3, 7, 7)
    patch_stride: Grid = (2, 4, 4)
    patch_padding: Grid = (1, 3, 3)
    drop_path: float = 0.0
    activation_checkpointing: bool = False

    @property
    def q_stride_blocks(self) -> Tuple[int, ...]:
        return self.doubling_blocks if self.keep_last_q_stride else self.doubling_blocks[:-1]

    @property
    def output_stride(self) -> Grid:
        """Pixels (frames) per output token at every axis."""
        s = 2 ** len(self.q_stride_blocks)
        return (self.patch_stride[0], self.patch_stride[1] * s, self.patch_stride[2] * s)

    def stage_width(self, block: int) -> Tuple[int, int]:
        """(channels, heads) of the stage that `block` belongs to; block -1 is the patch embedding."""
        doublings = sum(1 for d in self.doubling_blocks if d <= block)
        return self.embed_dim * 2**doublings, self.num_heads * 2**doublings


def mvit_s() -> MViTConfig:
    return MViTConfig("mvit_s", depth=16, embed_dim=96, num_heads=1, doubling_blocks=(1, 3, 14))


def mvit_b() -> MViTConfig:
    return MViTConfig("mvit_b", depth=24, embed_dim=96, num_heads=1, doubling_blocks=(2, 5, 21))


def mvit_l() -> MViTConfig:
    return MViTConfig("mvit_l", depth=48, embed_dim=144, num_heads=2, doubling_blocks=(2, 8, 44))


def mvit_tiny() -> MViTConfig:
    """For tests: four blocks, one per stage, 16 → 128 channels."""
    return MViTConfig("mvit_tiny", depth=4, embed_dim=16, num_heads=1, doubling_blocks=(1, 2, 3))


ARCHS = {"mvit_s": mvit_s, "mvit_b": mvit_b, "mvit_l": mvit_l, "mvit_tiny": mvit_tiny}


def patch_grid(cfg: MViTConfig, input_size: Sequence[int]) -> Grid:
    """Token grid after the patch embedding for an input of (T, H, W) pixels (Conv3d output size)."""
    return tuple(
        (n + 2 * p - k) // s + 1
        for n, k, s, p in zip(input_size, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)
    )


def block_configs(cfg: MViTConfig, input_size: Sequence[int]) -> List[BlockConfig]:
    """Per-block settings: widths, heads, Q strides at stage transitions, adaptive KV strides, drop-path ramp."""
    grid = patch_grid(cfg, input_size)
    kv_stride = cfg.kv_stride_adaptive
    drop_paths = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
    blocks = []
    for i in range(cfg.depth):
        stride_q = (1, 2, 2) if i in cfg.q_stride_blocks else (1, 1, 1)
        kv_stride = tuple(max(kv // q, 1) for kv, q in zip(kv_stride, stride_q))
        width, heads = cfg.stage_width(i)
        if cfg.dim_mul_in_att:
            dim_in, dim_out = cfg.stage_width(i - 1)[0], width
        else:
            dim_in, dim_out = width, cfg.stage_width(min(i + 1, cfg.depth - 1))[0]
        blocks.append(
            BlockConfig(dim_in, dim_out, heads, stride_q, kv_stride, grid, cfg.dim_mul_in_att, drop_path=drop_paths[i])
        )
        grid = tuple(n // s for n, s in zip(grid, stride_q))
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# Relative positions


def rel_pos_table_length(input_len: int, stride_q: int, stride_kv: int) -> int:
    """Entries needed for all query/key offsets along one axis (as PySlowFast sizes them)."""
    return 2 * max(input_len // stride_q, input_len // stride_kv) - 1


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate an L×C table to length×C (identity when the length already matches)."""
    if table.shape[0] == length:
        return table
    return F.interpolate(table.t().unsqueeze(0), size=length, mode="linear").squeeze(0).t()


def rel_pos_lookup(table: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """q_len×k_len×C embeddings of the offsets between query and key positions of one axis.

    When Q and K are pooled to different lengths, positions are scaled to the finer one (MViTv2)."""
    table = resize_rel_pos(table, 2 * max(q_len, k_len) - 1)
    q_ratio, k_ratio = max(k_len / q_len, 1.0), max(q_len / k_len, 1.0)
    q_pos = torch.arange(q_len, device=table.device)[:, None] * q_ratio
    k_pos = torch.arange(k_len, device=table.device)[None, :] * k_ratio
    return table[(q_pos - k_pos + (k_len - 1) * k_ratio).long()]


def rel_pos_terms(
    q: torch.Tensor,
    q_grid: Grid,
    k_grid: Grid,
    rel_pos_t: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
) -> torch.Tensor:
    """Per-axis relative-position logits of the grid queries, B×heads×Nq×(kt+kh+kw): entry (i, a) is q_i·R[pos(q_i)
    − a] for key position a along t, then h, then w. The logit between query i and key j is the sum of its three
    entries at the positions of j (`rel_pos_bias` writes that sum out, `fold_rel_pos` leaves it to the matmul).

    Uses the unscaled (pooled) queries, as the official models do."""
    b, heads, _, c = q.shape
    (qt, qh, qw), (kt, kh, kw) = q_grid, k_grid
    r_q = q[:, :, 1:].reshape(b, heads, qt, qh, qw, c)
    terms_t = torch.einsum("bnthwc,tkc->bnthwk", r_q, rel_pos_lookup(rel_pos_t, qt, kt))
    terms_h = torch.einsum("bnthwc,hkc->bnthwk", r_q, rel_pos_lookup(rel_pos_h, qh, kh))
    terms_w = torch.einsum("bnthwc,wkc->bnthwk", r_q, rel_pos_lookup(rel_pos_w, qw, kw))
    return torch.cat((terms_t, terms_h, terms_w), dim=-1).reshape(b, heads, qt * qh * qw, kt + kh + kw)


def rel_pos_bias(terms: torch.Tensor, k_grid: Grid) -> torch.Tensor:
    """The decomposed relative-position logits written out: B×heads×(1+Nq)×(1+Nk), zero in the cls row and column."""
    b, heads, nq, _ = terms.shape
    kt, kh, kw = k_grid
    bias_t, bias_h, bias_w = terms.split(k_grid, dim=-1)
    bias = bias_t[..., :, None, None] + bias_h[..., None, :, None] + bias_w[..., None, None, :]
    return F.pad(bias.reshape(b, heads, nq, kt * kh * kw), (1, 0, 1, 0))


def key_positions(k_grid: Grid, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1+Nk)×(kt+kh+kw) one-hot positions of the keys along t, h and w (three ones per grid key, none for cls), so
    that terms · key_positionsᵀ is the relative-position bias."""
    t, h, w = torch.meshgrid(*(torch.arange(n, device=device) for n in k_grid), indexing="ij")
    columns = torch.stack((t.flatten(), k_grid[0] + h.flatten(), k_grid[0] + k_grid[1] + w.flatten()), dim=1)
    positions = torch.zeros(1 + columns.shape[0], sum(k_grid), dtype=dtype, device=device)
    positions[1:].scatter_(1, columns, 1.0)
    return positions


def fold_rel_pos(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, terms: torch.Tensor, k_grid: Grid, scale: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v for plain attention at scale 1 with the relative positions inside the dot product:
    q' = [q, terms] (zero terms for the cls query), k' = [scale·k, key positions], so q'·k' = scale·q·k + bias (the
    scale goes on the keys, far fewer than the queries after KV pooling).

    The three are zero-padded to one width, a multiple of 8: the fused kernels (FlashAttention on GPU, the flash
    kernel on CPU) take only equal head widths, the GPU ones only multiples of 8. Zero columns add nothing to q'·k';
    the output's extra columns are zero and are cut off by the caller."""
    b, heads, nk, c = k.shape
    width = -(-(c + terms.shape[-1]) // 8) * 8
    positions = key_positions(k_grid, k.dtype, k.device).expand(b, heads, -1, -1)
    q = torch.cat((q, F.pad(terms.to(q.dtype), (0, width - c - terms.shape[-1], 1, 0))), dim=-1)
    k = F.pad(torch.cat((k * scale, positions), dim=-1), (0, width - c - positions.shape[-1]))
    return q, k, F.pad(v, (0, width - c))


# ---------------------------------------------------------------------------------------------------------------
# Blocks


def pool_tokens(x: torch.Tensor, pool: nn.Module, grid: Grid) -> Tuple[torch.Tensor, Grid]:
    """Apply a Conv3d/MaxPool3d to the grid tokens of B×heads×(1+N)×C (or B×(1+N)×C); the cls token passes."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(1)
    b, heads, _, c = x.shape
    cls_tok, tokens = x[:, :, :1], x[:, :, 1:]
    tokens = tokens.reshape(b * heads, *grid, c).permute(0, 4, 1, 2, 3)
    tokens = pool(tokens)
    new_grid = tuple(tokens.shape[2:])
    tokens = tokens.reshape(b, heads, c, -1).transpose(2, 3)
    x = torch.cat((cls_tok, tokens), dim=2)
    return (x.squeeze(1) if squeeze else x), new_grid


ATTENTION_KERNELS = ("folded", "bias_mask", "explicit")


class MultiScaleAttention(nn.Module):
    """Pooling attention: Q, K, V pooled by depthwise Conv3d + LayerNorm, relative positions, residual pooling.

    `kernel` is one of three exact formulations of softmax(q·kᵀ·scale + bias)·v (ATTENTION_KERNELS):
    "folded" (default, fastest): the relative positions folded into q and k, `scaled_dot_product_attention` without
    a mask, which the fused kernels take; "bias_mask": SDPA with the bias as an additive float mask (kept off the
    fused kernels by the mask; compared in the model benchmark); "explicit": matmul, softmax, matmul written out
    (the reference of the tests and the benchmark)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        dim = cfg.attn_dim
        if dim % cfg.num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.head_dim = dim // cfg.num_heads
        self.scale = self.head_dim**-0.5
        self.kernel = "folded"
        self.qkv = nn.Linear(cfg.dim_in, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pool_q, self.norm_q = self._pool(cfg.kernel, cfg.stride_q)
        self.pool_k, self.norm_k = self._pool(cfg.kernel, cfg.stride_kv)
        self.pool_v, self.norm_v = self._pool(cfg.kernel, cfg.stride_kv)
        lengths = [rel_pos_table_length(n, sq, skv) for n, sq, skv in zip(cfg.input_grid, cfg.stride_q, cfg.stride_kv)]
        self.rel_pos_t = nn.Parameter(torch.zeros(lengths[0], self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(lengths[1], self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(lengths[2], self.head_dim))

    def set_kernel(self, kernel: str) -> None:
        if kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention kernel {kernel!r}: expected one of {ATTENTION_KERNELS}")
        self.kernel = kernel

    def _pool(self, kernel: Grid, stride: Grid) -> Tuple[nn.Conv3d, nn.LayerNorm]:
        conv = nn.Conv3d(
            self.head_dim,
            self.head_dim,
            kernel,
            stride=stride,
            padding=[k // 2 for k in kernel],
            groups=self.head_dim,
            bias=False,
        )
        return conv, nn.LayerNorm(self.head_dim, eps=LAYER_NORM_EPS)

    def _pooled(self, x: torch.Tensor, pool: nn.Conv3d, norm: nn.LayerNorm, grid: Grid) -> Tuple[torch.Tensor, Grid]:
        x, grid = pool_tokens(x, pool, grid)
        return norm(x), grid

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_grid: Grid, k_grid: Grid) -> torch.Tensor:
        """softmax(q·kᵀ·scale + bias)·v with the decomposed relative-position bias, by `self.kernel`."""
        terms = rel_pos_terms(q, q_grid, k_grid, self.rel_pos_t, self.rel_pos_h, self.rel_pos_w)
        if self.kernel == "folded":
            out = F.scaled_dot_product_attention(*fold_rel_pos(q, k, v, terms, k_grid, self.scale), scale=1.0)
            return out[..., : v.shape[-1]]
        bias = rel_pos_bias(terms, k_grid)
        if self.kernel == "bias_mask":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        logits = (q * self.scale) @ k.transpose(-2, -1) + bias
        return logits.softmax(dim=-1) @ v

    def pooled_qkv(self, x: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Grid, Grid]:
        """B×(1+N)×C tokens → pooled, normed q, k, v (B×heads×(1+N')×head_dim) and the q and k grids."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, q_grid = self._pooled(q, self.pool_q, self.norm_q, grid)
        k, k_grid = self._pooled(k, self.pool_k, self.norm_k, grid)
        v, _ = self._pooled(v, self.pool_v, self.norm_v, grid)
        return q, k, v, q_grid, k_grid

    def forward(self, x: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, Grid]:
        b = x.shape[0]
        q, k, v, q_grid, k_grid = self.pooled_qkv(x, grid)
        out = self.attend(q, k, v, q_grid, k_grid)
        out = out + F.pad(q[:, :, 1:], (0, 0, 1, 0))  # residual pooling, not on the cls token
        out = out.transpose(1, 2).reshape(b, -1, self.num_heads * self.head_dim)
        return self.proj(out), q_grid


class Mlp(nn.Module):
    def __init__(self, dim_in: int, hidden: int, dim_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MultiScaleBlock(nn.Module):
    """Pre-norm block: x + attn(norm1 x) with a max-pooled skip when Q is strided, then x + mlp(norm2 x).

    Where the width changes, `proj` (Linear) maps the normed input of the attention (dim_mul_in_att) or of the MLP
    onto the new width for the residual path."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm1 = nn.LayerNorm(cfg.dim_in, eps=LAYER_NORM_EPS)
        self.attn = MultiScaleAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.attn_dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(cfg.attn_dim, int(cfg.attn_dim * cfg.mlp_ratio), cfg.dim_out)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()
        self.proj = nn.Linear(cfg.dim_in, cfg.dim_out) if cfg.dim_in != cfg.dim_out else None
        strided = math.prod(cfg.stride_q) > 1
        kernel_skip = [s + 1 if s > 1 else 1 for s in cfg.stride_q]
        self.pool_skip = nn.MaxPool3d(kernel_skip, cfg.stride_q, [k // 2 for k in kernel_skip]) if strided else None

    def forward(self, x: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, Grid]:
        x_norm = self.norm1(x)
        x_attn, new_grid = self.attn(x_norm, grid)
        if self.proj is not None and self.cfg.dim_mul_in_att:
            x = self.proj(x_norm)
        if self.pool_skip is not None:
            x, _ = pool_tokens(x, self.pool_skip, grid)
        x = x + self.drop_path(x_attn)
        x_norm = self.norm2(x)
        if self.proj is not None and not self.cfg.dim_mul_in_att:
            x = self.proj(x_norm)
        return x + self.drop_path(self.mlp(x_norm)), new_grid


# ---------------------------------------------------------------------------------------------------------------
# Backbone


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, cfg.embed_dim, cfg.patch_kernel, cfg.patch_stride, cfg.patch_padding)

    def forward(self, video: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        x = self.proj(video)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


def check_video(video: torch.Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be B×3×T×H×W, got shape {tuple(video.shape)}")


class MViT(nn.Module):
    """Patch embedding, cls token (no absolute positions), MultiScaleBlocks. Returns normalisation-free tokens."""

    def __init__(self, cfg: MViTConfig, input_size: Sequence[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_size = tuple(input_size)
        self.block_configs = block_configs(cfg, input_size)
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.blocks = nn.ModuleList(MultiScaleBlock(b) for b in self.block_configs)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.cls_token, std=INIT_STD)

    @property
    def dim_out(self) -> int:
        return self.block_configs[-1].dim_out

    def set_attention_kernel(self, kernel: str) -> None:
        """Switch every block to one of ATTENTION_KERNELS (all exact; "folded", the default, is the fastest)."""
        for block in self.blocks:
            block.attn.set_kernel(kernel)

    def embed(self, video: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        """Patch tokens; the clip may stay float32 (the HOG target reads it) while the weights are bf16."""
        check_video(video)
        return self.patch_embed(video.to(self.patch_embed.proj.weight.dtype))

    def encode(self, tokens: torch.Tensor, grid: Grid) -> Tuple[torch.Tensor, Grid]:
        """Prepend the cls token and run the blocks."""
        x = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        for block in self.blocks:
            if self.cfg.activation_checkpointing and self.training and torch.is_grad_enabled():
                x, grid = checkpoint(block, x, grid, use_reentrant=False)
            else:
                x, grid = block(x, grid)
        return x, grid

    def forward(self, video: torch.Tensor) -> Tuple[torch.Tensor, Grid]:
        return self.encode(*self.embed(video))

    def layer_id(self, name: str) -> int:
        """0 for the patch embedding and cls token, i+1 for block i (name relative to this module)."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 0


def init_weights(m: nn.Module) -> None:
    """Trunc-normal(0.02) weights for Linear/Conv, 0.02 biases, LayerNorm (1, 0.02), trunc-normal rel-pos tables."""
    if isinstance(m, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(m.weight, std=INIT_STD)
        if m.bias is not None:
            nn.init.constant_(m.bias, INIT_BIAS)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.constant_(m.bias, INIT_BIAS)
    elif isinstance(m, MultiScaleAttention):
        for table in (m.rel_pos_t, m.rel_pos_h, m.rel_pos_w):
            nn.init.trunc_normal_(table, std=INIT_STD)


class BackboneLayerIds:
    """Layer ids (for layer-wise LR decay) of a model built around `self.backbone`: the backbone's own ids (patch
    embedding and cls token 0, block i at i + 1), `embedding_params` of the wrapper at 0, anything else (heads,
    final norms) at the top id depth + 1. `num_layers` counts the ids."""

    backbone: MViT
    embedding_params: Tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return self.backbone.cfg.depth + 2

    def layer_id(self, name: str) -> int:
        if name.startswith("backbone."):
            return self.backbone.layer_id(name[len("backbone.") :])
        return 0 if name in self.embedding_params else self.num_layers - 1
