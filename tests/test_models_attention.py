"""Attention kernels of the MViTv2 block (docs/design.md §4): the relative positions folded into q and k (the default),
the bias as an SDPA mask, and the written-out matmul-softmax reference compute the same function, forward and
backward, on odd grids, with and without pooling, for single frames and with the cls token."""

from __future__ import annotations

import pytest
import torch

from mfvideo.models.mvit import ATTENTION_KERNELS, BlockConfig, MultiScaleBlock, MViT, mvit_tiny
from models_helpers import clip_batch

FAST_KERNELS = [kernel for kernel in ATTENTION_KERNELS if kernel != "explicit"]

# (input grid, Q stride, KV stride): odd sizes everywhere; "pooled" strides Q and KV, "unpooled" keeps every token
# (the depthwise convolutions still run at stride 1), "single frame" is T = 1 (images).
GRIDS = {
    "pooled": ((3, 5, 7), (1, 2, 2), (1, 2, 2)),
    "kv-pooled": ((5, 7, 5), (1, 1, 1), (2, 4, 2)),
    "unpooled": ((3, 5, 7), (1, 1, 1), (1, 1, 1)),
    "single-frame": ((1, 7, 9), (1, 2, 2), (1, 4, 4)),
}


def attention_block(grid, stride_q, stride_kv, seed: int = 0) -> MultiScaleBlock:
    """Two heads of width 8, in float64 so that the kernels can be held to a tolerance far below any real error;
    relative-position tables scaled up so that they move the logits as much as q·k does (at their
    trunc-normal(0.02) init a wrong bias would hide inside a float32 tolerance)."""
    torch.manual_seed(seed)
    block = MultiScaleBlock(
        BlockConfig(
            dim_in=16,
            dim_out=24,
            num_heads=2,
            stride_q=stride_q,
            stride_kv=stride_kv,
            input_grid=grid,
            dim_mul_in_att=True,
        )
    ).double()
    with torch.no_grad():
        for table in (block.attn.rel_pos_t, block.attn.rel_pos_h, block.attn.rel_pos_w):
            table.normal_(0.0, 1.0)
    return block


def run_block(block: MultiScaleBlock, kernel: str, x: torch.Tensor, grid):
    """Output, input gradient and every parameter gradient of one forward + backward with `kernel`."""
    block.attn.set_kernel(kernel)
    block.zero_grad()
    x = x.detach().requires_grad_(True)
    out, out_grid = block(x, grid)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)  # every output element matters
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    return out.detach(), out_grid, x.grad, grads


@pytest.mark.parametrize("kernel", FAST_KERNELS)
@pytest.mark.parametrize("case", sorted(GRIDS))
def test_kernel_equals_explicit_attention_forward_and_backward(case, kernel):
    grid, stride_q, stride_kv = GRIDS[case]
    block = attention_block(grid, stride_q, stride_kv)
    x = torch.randn(2, 1 + grid[0] * grid[1] * grid[2], 16, dtype=torch.float64)
    out, out_grid, x_grad, grads = run_block(block, kernel, x, grid)
    ref, ref_grid, ref_x_grad, ref_grads = run_block(block, "explicit", x, grid)
    assert out_grid == ref_grid
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out[:, 0], ref[:, 0], rtol=1e-10, atol=1e-10)  # the cls token's own row
    torch.testing.assert_close(x_grad, ref_x_grad, rtol=1e-9, atol=1e-10)
    assert x_grad[:, 0].abs().sum() > 0  # gradient reaches the cls token
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-9, atol=1e-10, msg=name)
    for axis in ("t", "h", "w"):  # the tables really take part
        assert ref_grads[f"attn.rel_pos_{axis}"].abs().sum() > 0, axis


def test_relative_positions_change_the_output():
    """The tables matter in these tests: zeroing them moves the output by far more than the tolerance."""
    grid, stride_q, stride_kv = GRIDS["pooled"]
    block = attention_block(grid, stride_q, stride_kv)
    x = torch.randn(2, 1 + grid[0] * grid[1] * grid[2], 16, dtype=torch.float64)
    with_tables = run_block(block, "folded", x, grid)[0]
    with torch.no_grad():
        for table in (block.attn.rel_pos_t, block.attn.rel_pos_h, block.attn.rel_pos_w):
            table.zero_()
    assert (run_block(block, "folded", x, grid)[0] - with_tables).abs().max() > 0.1


def test_folded_is_the_default_and_kernels_are_checked():
    model = MViT(mvit_tiny(), (8, 64, 64))
    assert {block.attn.kernel for block in model.blocks} == {"folded"}
    model.set_attention_kernel("explicit")
    assert {block.attn.kernel for block in model.blocks} == {"explicit"}
    with pytest.raises(ValueError, match=r"attention kernel 'flash': expected one of \('folded'"):
        model.set_attention_kernel("flash")


def test_folded_attention_runs_sdpa_without_a_mask():
    """No mask reaches scaled_dot_product_attention, so the fused kernels may take it."""
    block = attention_block(*GRIDS["pooled"])
    grid = GRIDS["pooled"][0]
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append((attn_mask, q.shape[-1], k.shape[-1], v.shape[-1]))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        block(torch.randn(1, 1 + grid[0] * grid[1] * grid[2], 16, dtype=torch.float64), grid)
    finally:
        torch.nn.functional.scaled_dot_product_attention = original
    ((mask, q_width, k_width, v_width),) = calls
    assert mask is None and q_width == k_width == v_width and q_width % 8 == 0


@pytest.mark.parametrize("kernel", FAST_KERNELS)
def test_whole_backbone_agrees_with_explicit_attention(kernel):
    """The tiny MViT on real decoded video: every block, pooled and unpooled, through the kernel under test."""
    torch.manual_seed(0)
    model = MViT(mvit_tiny(), (8, 64, 64))
    video = clip_batch(2, 8, 64, 64)
    outputs, grads = [], []
    for each in (kernel, "explicit"):
        model.set_attention_kernel(each)
        model.zero_grad()
        x, _ = model(video)
        x.square().mean().backward()
        outputs.append(x.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-6)
