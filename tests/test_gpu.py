"""The package's code paths on CUDA against the CPU: folded attention in bf16 against float64 explicit attention,
MaskFeat, the classifier and the detector in bf16 autocast against fp32, DeepSpeed ZeRO-1/2/3 over NCCL, the HOG
target, torchvision's RoIAlign against the plain-torch one, and kill -9 + resume of a training run on the GPU.

Every test is marked `gpu` and skips, with the reason, where CUDA is not available (CI has none): `pytest -m gpu`
selects them, tools/gpu_check.sh runs them on a GPU machine. Tolerances are stated where they are used, with what was
measured and what a wrong result would look like.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import signal
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from launch_helpers import REPO, signal_after_step
from mfvideo.benchmarks.hog import natural_video, normalise
from mfvideo.config.schema import ModelConfig
from mfvideo.engine import checkpoint
from mfvideo.engine.monitor import read_metrics
from mfvideo.models.mvit import MultiScaleAttention, block_configs, mvit_s
from mfvideo.models.roi_align import roi_align_torch, torchvision_roi_align
from mfvideo.targets.hog import HogTarget, hog_reference
from mfvideo.targets.masks import build_mask_generator, mask_grid
from mfvideo.tasks import build_model
from test_engine import tiny_recipe
from training_helpers import losses_by_step, make_demo_shards, run_to_success, train_command, train_to_end

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: torch.cuda.is_available() is False on this machine (tools/gpu_check.sh runs these "
        "tests on a GPU machine)",
    ),
]

# What a training run needs besides the package's own imports: the engine runs on DeepSpeed and draws loss.png with
# matplotlib at the end of every run (tools/gpu_check.sh installs both where gpu_wheels/ holds them).
TRAINING_NEEDS = {"deepspeed": "the training engine runs on it", "matplotlib": "the engine draws loss.png with it"}
NOT_FOR_TRAINING = "; ".join(
    f"{name} is not importable here ({why})"
    for name, why in TRAINING_NEEDS.items()
    if not importlib.util.find_spec(name)
)
HARNESS = REPO / "tests" / "engine_harness.py"
CUDA = torch.device("cuda")


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """‖ours − reference‖ / ‖reference‖ over all elements, in float64 on the CPU."""
    ours, reference = ours.detach().cpu().double(), reference.detach().cpu().double()
    return ((ours - reference).norm() / reference.norm()).item()


@contextlib.contextmanager
def without_tf32():
    """fp32 matrix products and convolutions in full fp32 on the GPU (cuDNN's convolutions default to TF32, whose 10-bit
    mantissa would hide differences of 1e-3)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------------------------------------------ attention

# bf16 autocast rounds every matrix product's inputs to 8 significant bits (accumulating in fp32), so the attention
# module's output and input gradient land about 0.6 % (relative L2) from the exact values; CPU bf16 autocast was
# measured at 0.5-0.7 % on these blocks, the largest element 0.9-1.2 % of the output's largest. The tolerances give 3×
# that. A kernel that dropped the relative positions would be off by 19-41 % (measured in float64), 5× the tolerance
# or more, which the test checks too.
ATTENTION_BF16_RTOL = 2e-2  # relative L2 error of the output and of the input gradient
ATTENTION_BF16_MAX = 3e-2  # largest elementwise error, as a share of the reference's largest element
# fp32 on the GPU (TF32 off): exact but for summation order, measured 3e-7 to 7e-7 on the CPU
ATTENTION_FP32_RTOL = 1e-5


def flash_only():
    """`scaled_dot_product_attention` restricted to FlashAttention: a call it cannot take raises instead of falling
    back to another kernel."""
    return sdpa_kernel(SDPBackend.FLASH_ATTENTION)


def mvit_s_attention(block: int) -> tuple[MultiScaleAttention, tuple]:
    """MaskFeat MViT-S's attention of `block` at 8×112² (block 0: one head of width 96, K and V pooled 8× in space;
    block 1: Q strided, two heads), in float64, its relative-position tables drawn with std 0.2 so that they move the
    logits as much as q·k does (at their trunc-normal(0.02) init a wrong bias would hide in the bf16 tolerance)."""
    cfg = block_configs(replace(mvit_s(), keep_last_q_stride=False), (8, 112, 112))[block]
    torch.manual_seed(block)
    attention = MultiScaleAttention(cfg).double()
    with torch.no_grad():
        for table in (attention.rel_pos_t, attention.rel_pos_h, attention.rel_pos_w):
            table.normal_(0.0, 0.2)
    return attention, cfg.input_grid


def attention_pass(attention: MultiScaleAttention, kernel: str, x: torch.Tensor, grid, bf16: bool = False):
    """Output and input gradient of one forward + backward of `attention` with `kernel`; every output element
    weighted differently in the backward, so that each one's gradient counts."""
    attention.set_kernel(kernel)
    x = x.detach().requires_grad_(True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        out, _ = attention(x, grid)
    weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=x.dtype, device=x.device).reshape(out.shape)
    (out.to(x.dtype) * weights).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("block", [0, 1], ids=["block0-kv-pooled", "block1-q-strided-two-heads"])
def test_folded_attention_in_bf16_on_cuda_matches_float64_explicit_attention(block):
    """The default kernel ("folded": relative positions inside q and k, SDPA without a mask) under bf16 autocast on
    CUDA, against matmul-softmax-matmul in float64 on the CPU, forward and input gradient (tolerances above); and the
    same in fp32 on CUDA to 1e-5. The fused FlashAttention kernel alone must take the folded bf16 call: folding is
    what lets it."""
    attention, grid = mvit_s_attention(block)
    x = torch.randn(2, 1 + math.prod(grid), attention.qkv.in_features, dtype=torch.float64)
    reference_out, reference_grad = attention_pass(attention, "explicit", x, grid)

    on_gpu = copy.deepcopy(attention).float().to(CUDA)
    for kernels, allowed in (("any SDPA kernel", contextlib.nullcontext()), ("FlashAttention only", flash_only())):
        with allowed:
            out, grad = attention_pass(on_gpu, "folded", x.float().to(CUDA), grid, bf16=True)
        for name, ours, reference in (("output", out, reference_out), ("input gradient", grad, reference_grad)):
            error = relative_error(ours, reference)
            assert error <= ATTENTION_BF16_RTOL, (kernels, name, error)
            largest = ((ours.cpu().double() - reference).abs().max() / reference.abs().max()).item()
            assert largest <= ATTENTION_BF16_MAX, (kernels, name, largest)

    with without_tf32():
        out, grad = attention_pass(on_gpu, "folded", x.float().to(CUDA), grid)
    assert relative_error(out, reference_out) <= ATTENTION_FP32_RTOL
    assert relative_error(grad, reference_grad) <= ATTENTION_FP32_RTOL

    # The bf16 tolerance can see a wrong bias: without its relative positions the output and the input gradient move
    # by 5× the tolerance or more.
    with torch.no_grad():
        for table in (attention.rel_pos_t, attention.rel_pos_h, attention.rel_pos_w):
            table.zero_()
    for ours, reference in zip(attention_pass(attention, "explicit", x, grid), (reference_out, reference_grad)):
        assert relative_error(ours, reference) >= 5 * ATTENTION_BF16_RTOL


# --------------------------------------------------------------------------------------------------------- models

# bf16 autocast against fp32, same weights and batch (mvit_tiny, 2 clips of 8×64², a photograph panning sideways,
# H.264-encoded and decoded). Measured with CPU bf16 autocast: losses within 7e-4; all gradients together 0.7-2.3 %
# from fp32 (relative L2); the head and the last block 1-2.5 %; the first block and the patch embedding 3-9 %, where
# the rounding of every block's backward has compounded. A wrong kernel or a lost term moves them by tens of percent.
MODEL_LOSS_RTOL = 1e-2
MODEL_GRAD_RTOL = 5e-2  # all gradients together, and the head's and the last block's
MODEL_FIRST_LAYERS_GRAD_RTOL = 0.2  # the patch embedding's and the first block's
HEADS = {"pretrain": "pred_head.proj.weight", "classify": "head.proj.weight", "detect": "roi_head.proj.weight"}


def task_batch(task: str, frames: int, size: int) -> dict:
    """The batch each model reads, as its loader makes it (two clips)."""
    pixels = natural_video(2, frames, size)
    if task == "pretrain":
        masks = build_mask_generator("cube", mask_grid(frames, size), min_units=1)
        rng = np.random.default_rng(0)
        mask = torch.from_numpy(np.stack([masks(rng) for _ in range(2)]))
        return {"video": normalise(pixels), "pixels": pixels, "mask": mask}
    if task == "classify":
        return {"video": normalise(pixels), "label": torch.tensor([1, 3])}
    return {
        "video": normalise(pixels),
        "boxes": torch.tensor([[4.0, 8.0, 40.0, 60.0], [0.0, 0.0, size, size], [20.0, 10.0, size - 1.0, size - 2.0]]),
        "box_index": torch.tensor([0, 1, 1]),
        "box_labels": torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]]),
    }


def loss_and_gradients(model: torch.nn.Module, batch: dict, bf16: bool) -> tuple[torch.Tensor, dict]:
    device = next(model.parameters()).device
    batch = {name: value.to(device) for name, value in batch.items()}
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(batch)["loss"]
    loss.backward()
    return loss.detach().cpu(), {name: p.grad.cpu() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", ["pretrain", "classify", "detect"])
def test_models_train_in_bf16_on_cuda_as_in_fp32_on_the_cpu(task):
    """MaskFeat (its HOG target from the uint8 pixels on the device), the classifier and the detector (RoIAlign in
    fp32 inside autocast): forward + backward on CUDA under bf16 autocast against fp32 on the CPU (tolerances above).
    Dropout is 0, so the two passes see the same network."""
    frames, size = 8, 64
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mvit_tiny", task=task, num_classes=5, dropout=0.0), frames, size).train()
    batch = task_batch(task, frames, size)
    reference_loss, reference = loss_and_gradients(model, batch, bf16=False)
    loss, grads = loss_and_gradients(copy.deepcopy(model).to(CUDA), batch, bf16=True)

    assert torch.isfinite(loss) and loss.item() == pytest.approx(reference_loss.item(), rel=MODEL_LOSS_RTOL)
    assert grads.keys() == reference.keys()
    # Gradients that vanish in exact arithmetic (K's LayerNorm bias: softmax ignores a shift shared by a query's
    # logits) are rounding noise in both passes: they count only as part of all the gradients together.
    names = list(reference)
    together = [torch.cat([each[name].flatten() for name in names]) for each in (grads, reference)]
    assert relative_error(*together) <= MODEL_GRAD_RTOL
    last = len(model.backbone.blocks) - 1
    for name, tolerance in (
        (HEADS[task], MODEL_GRAD_RTOL),
        (f"backbone.blocks.{last}.mlp.fc2.weight", MODEL_GRAD_RTOL),
        ("backbone.blocks.0.attn.qkv.weight", MODEL_FIRST_LAYERS_GRAD_RTOL),
        ("backbone.patch_embed.proj.weight", MODEL_FIRST_LAYERS_GRAD_RTOL),
    ):
        assert relative_error(grads[name], reference[name]) <= tolerance, name


# ----------------------------------------------------------------------------------------------------- HOG target


def test_hog_target_on_cuda_matches_the_cpu_and_the_exact_formula():
    """The HOG target of MaskFeat's 16×224² clips (a photograph panning sideways, H.264-encoded and decoded, uint8) on
    CUDA against the CPU: the Sobel gradients of integer pixels are exact on both, and the cell sums differ only in
    the order of the GPU's atomic adds (about 1e-7), so values agree to 1e-5; a pixel whose orientation lies within a
    rounding of a bin edge may fall into the neighbouring bin when CUDA's atan2 rounds the other way, which at most
    0.01 % of the values may show. Against the formula in float64, as the model benchmark holds the CPU: ≤ 0.01 % of
    the values more than 1e-3 off."""
    pixels = natural_video(2, 16, 224)
    target = HogTarget()
    on_cpu = target(pixels)
    on_cuda = target.to(CUDA)(pixels.to(CUDA))
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.float32 and on_cuda.shape == on_cpu.shape
    on_cuda = on_cuda.cpu()
    assert ((on_cuda - on_cpu).abs() > 1e-5).double().mean().item() <= 1e-4
    assert ((on_cuda.double() - hog_reference(pixels.double())).abs() > 1e-3).double().mean().item() <= 1e-4


# ------------------------------------------------------------------------------------------------------- RoIAlign


@pytest.mark.skipif(
    torchvision_roi_align is None,
    reason="torchvision does not import here (not installed, or its ops do not load with this torch build): only "
    "the plain-torch RoIAlign exists to compare",
)
def test_plain_torch_roi_align_matches_torchvision_on_cuda():
    """`roi_align_torch` against torchvision's CUDA kernel, forward and gradient of the features, on boxes that
    cross every boundary rule (partly outside, degenerate, larger than the map), for fixed and adaptive sampling,
    aligned or not, square and oblong outputs; then as the detector's RoI head calls it (7×7, aligned, adaptive, 1/16)
    on a micro-batch of 8 clips' 14×14 maps. fp32 both: agreement to 1e-5, as on the CPU (tests/test_detector.py);
    torchvision's backward adds with atomics, so the gradients agree to summation order."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 4, 9, 11, generator=g)
    corners = torch.rand(40, 2, generator=g) * torch.tensor([11.0, 9.0]) * 2.4 - 3.0
    sizes = torch.rand(40, 2, generator=g) * torch.tensor([11.0, 9.0]) * 1.6
    boxes = torch.cat((torch.randint(0, 3, (40, 1), generator=g).float(), corners, corners + sizes), 1)
    cases = [
        (maps, boxes * torch.tensor([1.0, 2.0, 2.0, 2.0, 2.0]), size, 0.5, ratio, aligned)
        for ratio in (0, 1, 2)
        for aligned in (True, False)
        for size in (7, (2, 3))
    ]
    head_maps = torch.randn(8, 64, 14, 14, generator=g)
    sides = torch.rand(32, 2, generator=g) * 150 + 20
    starts = torch.rand(32, 2, generator=g) * (224 - sides)
    clips = torch.arange(8).repeat_interleave(4)[:, None].float()
    cases.append((head_maps, torch.cat((clips, starts, starts + sides), 1), 7, 1 / 16, 0, True))

    for features, rois, size, scale, ratio, aligned in cases:
        features = features.to(CUDA).requires_grad_(True)
        rois = rois.to(CUDA)
        ours = roi_align_torch(features, rois, size, scale, ratio, aligned)
        theirs = torchvision_roi_align(features, rois, size, scale, ratio, aligned)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        upstream = torch.randn(ours.shape, generator=g).to(CUDA)
        (our_grad,) = torch.autograd.grad((ours * upstream).sum(), features)
        (their_grad,) = torch.autograd.grad((theirs * upstream).sum(), features)
        torch.testing.assert_close(our_grad, their_grad, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------- DeepSpeed over NCCL

# fp32 on the GPU against fp32 on the CPU, same initial weights and batches (the harness's synthetic stream): every
# reduction sums in another order, which clipping at 0.02 and Adam amplify over the 12 steps; tests/test_engine.py
# holds runs that differ only in summation order to 1e-3 relative (LOSS_RTOL), and the GPU's kernels differ from the
# CPU's in every sum, so 2e-3. A wrong gradient average, a lost partition or a shifted sample moves losses by percents.
GPU_CPU_LOSS_RTOL = 2e-3


def module_states(run: Path) -> dict:
    """The module's tensors in the DeepSpeed model-states file of `run`'s latest checkpoint, on the device they were
    saved from (under ZeRO-3 each parameter is an empty placeholder of its dtype on its device)."""
    from mfvideo.engine.safe_load import refusing_pickled_code

    folder = run / "checkpoints" / checkpoint.latest_tag(run / "checkpoints")
    (path,) = folder.glob("*mp_rank_00_model_states.pt")
    with refusing_pickled_code():
        return torch.load(path)["module"]


def saved_cuda_rng(run: Path) -> torch.Tensor | None:
    """The CUDA generator state rank 0 saved with `run`'s latest checkpoint: None when the run had no CUDA."""
    folder = run / "checkpoints" / checkpoint.latest_tag(run / "checkpoints")
    return torch.load(folder / "rank_0.pt", weights_only=True)["rng"]["cuda"]


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory) -> Path:
    """tests/test_engine.py's tiny pretraining run (mvit_tiny, 4×64², 12 steps of 8 clips, ZeRO-2) in one CPU
    process: CUDA hidden from it, so gloo and fp32."""
    tmp = tmp_path_factory.mktemp("cpu_reference")
    out = tmp / "run"
    proc = run_to_success(
        [sys.executable, str(HARNESS), str(tiny_recipe(tmp)), f"train.output_dir={out}"],
        extra_env={"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "4"},
    )
    assert "harness: process group backend gloo" in proc.stderr
    return out


@pytest.mark.skipif(bool(NOT_FOR_TRAINING), reason=NOT_FOR_TRAINING)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("zero_stage", [1, 2, 3])
def test_zero_training_on_one_gpu_over_nccl(cpu_reference, tmp_path, zero_stage, precision):
    """The real trainer (tests/engine_harness.py) in one process on the GPU: NCCL, the module on the device in the
    run's precision, ZeRO-`zero_stage`. In fp32 every step's loss is the CPU run's (GPU_CPU_LOSS_RTOL). In bf16
    (DeepSpeed's bf16 mode: bf16 weights in the module, fp32 master weights in the optimizer) the first step, before
    any update, differs only by bf16 rounding of the forward (1 %), and the run learns as the CPU run does (the last
    loss under half the first)."""
    out = tmp_path / "run"
    proc = run_to_success(
        [
            sys.executable,
            str(HARNESS),
            str(tiny_recipe(tmp_path)),
            f"train.output_dir={out}",
            f"train.zero_stage={zero_stage}",
            f"train.precision={precision}",
        ],
        extra_env={"NVIDIA_TF32_OVERRIDE": "0"},  # cuBLAS and cuDNN in full fp32: TF32 would round at 1e-3
    )
    assert "harness: process group backend nccl" in proc.stderr
    assert saved_cuda_rng(out) is not None
    states = module_states(out)
    assert {tensor.device.type for tensor in states.values()} == {"cuda"}
    expected_dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    assert {tensor.dtype for tensor in states.values() if tensor.is_floating_point()} == {expected_dtype}

    reference, losses = losses_by_step(cpu_reference), losses_by_step(out)
    assert list(losses) == list(reference) == list(range(1, 13))
    assert all(math.isfinite(loss) for loss in losses.values())
    if precision == "fp32":
        assert losses == pytest.approx(reference, rel=GPU_CPU_LOSS_RTOL, abs=0)
    else:
        assert losses[1] == pytest.approx(reference[1], rel=1e-2)
        assert losses[12] < 0.5 * losses[1]


# ------------------------------------------------------------------------------------------------ kill -9, resume


@pytest.fixture(scope="module")
def demo_recipe(tmp_path_factory) -> Path:
    """tests/test_train_demo.py's run: 64 demo videos in 4 shards, 2 epochs of 8 optimizer steps (micro-batch 4 × 2
    accumulation steps), a checkpoint every 3 steps; the data.decoder of the recipe, the loader putting batches on
    the GPU, DeepSpeed in bf16 (train.precision auto)."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_shards(root / "train", 64, 16)
    recipe = root / "demo.yaml"
    recipe.write_text(
        f"base: {REPO / 'recipes' / 'demo_pt.yaml'}\n"
        f'data: {{train: "{root / "train"}", num_frames: 4, crop_size: 64, num_workers: 1, shuffle_buffer: 16}}\n'
        "optim: {epochs: 2, warmup_epochs: 0.5}\n"
        "train: {global_batch_size: 8, micro_batch_size: 4, checkpoint_every: 3, log_every: 1, keep_last: 2, "
        "probe_every: 0}\n"
    )
    return recipe


@pytest.mark.skipif(bool(NOT_FOR_TRAINING), reason=NOT_FOR_TRAINING)
def test_sigkill_mid_epoch_on_the_gpu_then_resume_gives_the_uninterrupted_losses(demo_recipe, tmp_path):
    """tools/train.py on the GPU (the trainer takes CUDA and NCCL when they are there) killed by SIGKILL at step 5,
    past the step-3 checkpoint, and run again: it resumes (weights, optimizer, data position, the CPU and CUDA
    random streams) and every step's loss is the uninterrupted run's.

    On the CPU that holds to 1e-6 (tests/test_train_demo.py). On the GPU, kernels that add with atomics (the HOG
    target's scatter into cells, the backward of the relative-position lookups and of max pooling) sum in a varying
    order, so two uninterrupted runs may part by rounding that bf16 and Adam amplify. The resumed run is held to
    what a second uninterrupted run shows (×10, at least 1e-4 relative: two runs that happen to agree say little of
    the atomics' spread), and that spread must stay under 1e-3: a
    resume that lost the data position, the masks' random stream or the optimizer's moments moves losses by 1e-3 to
    percents."""
    first = train_to_end(demo_recipe, tmp_path / "uninterrupted")
    second = train_to_end(demo_recipe, tmp_path / "uninterrupted_again")
    assert saved_cuda_rng(first) is not None
    states = module_states(first)
    assert {tensor.device.type for tensor in states.values()} == {"cuda"}
    assert {tensor.dtype for tensor in states.values() if tensor.is_floating_point()} == {torch.bfloat16}
    expected = losses_by_step(first)
    assert list(expected) == list(range(1, 17))
    spread = max(abs(loss - expected[step]) / abs(expected[step]) for step, loss in losses_by_step(second).items())
    assert spread < 1e-3, f"two uninterrupted GPU runs part by {spread:.1e} relative: too far to judge a resume"

    out = tmp_path / "run"
    job = signal_after_step(train_command(demo_recipe, out), out, 5, signal.SIGKILL)
    job.communicate()
    assert max(read_metrics(out)) < 16

    resumed = run_to_success(train_command(demo_recipe, out))
    assert "resumed from" in resumed.stderr
    assert losses_by_step(out) == pytest.approx(expected, rel=max(1e-4, 10 * spread), abs=0)
