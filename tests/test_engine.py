"""The training engine under real DeepSpeed processes (CPU, gloo): data parallel equivalence, ZeRO, multi-node,
non-finite skipping, resume on another world size, bad recipes. The synthetic clip stream of
tests/engine_harness.py makes a global batch independent of the number of processes, so losses can be compared
step by step."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launch_helpers import REPO, child_env, deepspeed_command, run_command, torchrun_command
from mfvideo.engine import checkpoint
from mfvideo.engine.distributed import free_port
from mfvideo.engine.monitor import read_metrics

HARNESS = REPO / "tests" / "engine_harness.py"
# Tolerance for losses of runs that differ only in how the global batch is spread over processes: fp32 sums in
# another order (all-reduce, ZeRO partitions), and clipping at 0.02 then Adam amplify that to ~3e-4 relative
# after a dozen steps. A different sample order or a wrong gradient average moves losses by percents.
LOSS_RTOL = 1e-3


def tiny_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        textwrap.dedent("""
        data: {train: synthetic, num_frames: 4, crop_size: 64, num_workers: 0}
        mask: {mode: cube, ratio: 0.4}
        model: {arch: mvit_tiny, task: pretrain}
        optim: {lr: 2.0e-3, warmup_epochs: 0.5, epochs: 2, clip_grad: 0.02}
        train: {global_batch_size: 8, micro_batch_size: 2, zero_stage: 2, checkpoint_every: 100, log_every: 1}
    """)
    )
    return path


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = run_command(cmd, timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def torchrun(nproc: int, *args: str) -> list[str]:
    return torchrun_command(nproc, str(HARNESS), *args)


def losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in read_metrics(output_dir).values()]


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """Reference: one process, micro-batch 2, 4 accumulation steps, ZeRO-2."""
    tmp = tmp_path_factory.mktemp("single")
    out = tmp / "run"
    run([sys.executable, str(HARNESS), str(tiny_recipe(tmp)), f"train.output_dir={out}"])
    return out


def test_single_process_trains_and_writes_its_outputs(single_process):
    records = read_metrics(single_process)
    assert list(records) == list(range(1, 13))  # 48 samples / 8 per step × 2 epochs
    assert all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in records.values())
    assert records[12]["loss"] < 0.5 * records[1]["loss"]
    assert records[12]["lr"] < records[4]["lr"]  # cosine decay after the warmup peak (step 3)
    for name in ("recipe.yaml", "model.pt", "loss.png", "checkpoints/latest"):
        assert (single_process / name).exists(), name
    assert list((single_process / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (single_process / "checkpoints").glob("step_*")} == {"step_00000006", "step_00000012"}


def test_exported_weights_are_the_final_fp32_weights_and_load_strictly(single_process):
    import torch

    from mfvideo.config import load_recipe
    from mfvideo.models.checkpoint import load_pretrained
    from mfvideo.tasks import build_model

    recipe = load_recipe(single_process / "recipe.yaml")
    exported = torch.load(single_process / "model.pt", weights_only=True)["model"]
    model = build_model(recipe.model, recipe.data.num_frames, recipe.data.crop_size)
    fresh = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    load_pretrained(model, single_process / "model.pt")
    trained = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, fresh[name])]
    assert set(trained) >= {name for name, _ in model.named_parameters()}  # every parameter moved in training
    assert all(tensor.dtype == torch.float32 for tensor in exported.values())


def deepspeed_launcher(nproc: int, *args: str) -> list[str]:
    return deepspeed_command(nproc, str(HARNESS), *args)


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher, zero_stage, micro",
    [(deepspeed_launcher, 2, 2), (torchrun, 3, 4)],
    ids=["deepspeed-zero2", "torchrun-zero3"],
)
def test_two_processes_match_one_process(single_process, tmp_path, launcher, zero_stage, micro):
    out = tmp_path / "run"
    run(
        launcher(
            2,
            str(tiny_recipe(tmp_path)),
            f"train.output_dir={out}",
            f"train.zero_stage={zero_stage}",
            f"train.micro_batch_size={micro}",
        )
    )
    assert losses(out) == pytest.approx(losses(single_process), rel=LOSS_RTOL)
    # The exported weights are consolidated over the ZeRO partitions: the same model as the 1-process run's.
    import torch

    ours, reference = (
        torch.load(run_dir / "model.pt", weights_only=True)["model"] for run_dir in (out, single_process)
    )
    assert ours.keys() == reference.keys()
    assert_same_weights(ours, reference, sum(r["lr"] for r in read_metrics(single_process).values()))


def assert_same_weights(ours: dict, reference: dict, summed_lr: float) -> None:
    """Equal within rtol 1e-3 / atol 1e-4, but for a handful of elements (≤ 1 in 10,000) whose gradient is near zero:
    Adam moves every element by up to ~lr per step whatever its gradient's size, so where fp32 summation order flips
    a near-zero gradient's sign, the runs part by up to 2 × the summed learning rate (measured under ZeRO-3: 9 of
    325,804 elements, all in block 0's relative-position tables). A wrong gradient average or sample order moves
    most elements, and the losses, far more."""
    outside = 0
    for name in reference:
        gap = (ours[name] - reference[name]).abs()
        assert gap.max() <= 2 * summed_lr, name
        outside += int((gap > 1e-4 + 1e-3 * reference[name].abs()).sum())
    assert outside <= 1e-4 * sum(tensor.numel() for tensor in reference.values())


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process(single_process, tmp_path):
    out, port, recipe = tmp_path / "run", free_port(), tiny_recipe(tmp_path)
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                str(HARNESS),
                str(recipe),
                f"train.output_dir={out}",
            ],
            env=child_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert losses(out) == pytest.approx(losses(single_process), rel=LOSS_RTOL)


@pytest.mark.slow
def test_non_finite_losses_are_skipped_then_stop_the_run(tmp_path):
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    skip = run(
        [
            sys.executable,
            str(HARNESS),
            str(recipe),
            f"train.output_dir={out}",
            "train.max_steps=4",
            "harness.nan_steps=[2]",
        ]
    )
    records = read_metrics(out)
    assert records[2]["skipped_micro_batches"] == 4 and records[3]["skipped_micro_batches"] == 0
    assert "non-finite loss at step 2" in skip.stderr
    assert all(r["loss"] == r["loss"] for s, r in records.items() if s != 2)  # finite elsewhere

    out2 = tmp_path / "run2"
    proc = run_command(
        [
            sys.executable,
            str(HARNESS),
            str(recipe),
            f"train.output_dir={out2}",
            "train.checkpoint_every=2",
            "train.max_nonfinite_steps=3",
            "harness.nan_steps=[3,4,5]",
        ],
        300,
    )
    assert proc.returncode != 0
    assert "3 non-finite losses in a row" in proc.stderr and "step_00000002" in proc.stderr
    assert (out2 / "checkpoints" / "latest").read_text() == "step_00000002"


def test_bad_recipe_stops_before_any_work(tmp_path):
    recipe = tiny_recipe(tmp_path)
    out = tmp_path / "never"
    proc = run_command(
        [sys.executable, "tools/train.py", str(recipe), f"train.output_dir={out}", "optim.learning_rate=1"]
    )
    assert proc.returncode == 2
    assert "optim.learning_rate" in proc.stderr and not out.exists()
    proc = run_command(
        [sys.executable, "tools/train.py", str(recipe), f"train.output_dir={out}", "train.micro_batch_size=3"]
    )
    assert proc.returncode == 2
    assert "train.global_batch_size=8" in proc.stderr and "train.micro_batch_size=3" in proc.stderr
    assert not out.exists()
    proc = run_command(
        [
            sys.executable,
            "tools/train.py",
            str(recipe),
            f"train.output_dir={out}",
            f"data.train={tmp_path / 'k400' / 'train'}",
        ]
    )
    assert proc.returncode == 2
    assert "data.train=" in proc.stderr and "k400/train" in proc.stderr and "make_shards" in proc.stderr
    assert not out.exists()


def tiny_finetune_recipe(tmp_path: Path) -> Path:
    """The fine-tuning path: classifier, soft targets from mixup/CutMix, random erasing, label smoothing, layer decay,
    clip 5.0. No drop path: its draws differ per rank by design, which 1-vs-2-process equality cannot allow."""
    path = tmp_path / "tiny_ft.yaml"
    path.write_text(
        textwrap.dedent("""
        data: {train: synthetic, num_frames: 4, crop_size: 64, num_workers: 0}
        augment: {erase_prob: 0.25, mixup_alpha: 0.8, cutmix_alpha: 1.0, mix_switch_prob: 0.5,
                  label_smoothing: 0.1}
        mask: {mode: none}
        model: {arch: mvit_tiny, task: classify, num_classes: 5, drop_path: 0.0, dropout: 0.0}
        optim: {lr: 2.0e-3, warmup_epochs: 0.5, epochs: 2, clip_grad: 5.0, layer_decay: 0.75}
        train: {global_batch_size: 8, micro_batch_size: 2, zero_stage: 2, checkpoint_every: 100, log_every: 1}
    """)
    )
    return path


@pytest.mark.slow
def test_two_process_zero2_finetuning_matches_one_process(tmp_path):
    recipe = tiny_finetune_recipe(tmp_path)
    single, double = tmp_path / "single", tmp_path / "double"
    run([sys.executable, str(HARNESS), str(recipe), f"train.output_dir={single}"])
    run(torchrun(2, str(recipe), f"train.output_dir={double}"))
    reference = losses(single)
    assert len(reference) == 12 and reference[-1] < reference[0]
    assert losses(double) == pytest.approx(reference, rel=LOSS_RTOL)


def resume_cmd(nproc: int, *args: str) -> list[str]:
    return torchrun(nproc, *args) if nproc > 1 else [sys.executable, str(HARNESS), *args]


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_zero2_resume_on_another_world_size_continues_the_uninterrupted_run(single_process, tmp_path, first, then):
    """Stopped at the end of epoch 0 (step 6), resumed with another number of processes through the universal
    checkpoint: the synthetic stream gives the same global batches, so steps 7-12 must reproduce the uninterrupted
    run within LOSS_RTOL. That holds only with the optimizer state loaded: Adam restarted from zero moments moves
    every weight by ~lr at step 7, which shifts the losses of steps 8-12 by far more than LOSS_RTOL."""
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    run(resume_cmd(first, str(recipe), f"train.output_dir={out}", "train.max_steps=6"))
    resumed = run(resume_cmd(then, str(recipe), f"train.output_dir={out}"))
    assert f"written by {first} processes, {then} run now: resuming from its universal form" in resumed.stderr
    assert "the data stream restarts at the beginning of epoch 1" in resumed.stderr
    assert (out / "checkpoints" / "step_00000006" / "universal" / "zero").is_dir()
    records = read_metrics(out)
    assert list(records) == list(range(1, 13)) and records[7]["epoch"] == 1
    reference = losses(single_process)
    assert losses(out) == pytest.approx(reference, rel=LOSS_RTOL)
    import torch

    ours, theirs = (torch.load(run_dir / "model.pt", weights_only=True)["model"] for run_dir in (out, single_process))
    assert_same_weights(ours, theirs, sum(r["lr"] for r in read_metrics(single_process).values()))
    assert json.loads((out / "checkpoints" / "step_00000012" / "layout.json").read_text())["world size"] == then


@pytest.mark.slow
def test_zero3_stopped_and_resumed_on_the_same_world_size_continues_the_uninterrupted_run(tmp_path):
    """ZeRO-3 partitions the weights too: a run stopped at step 6 and resumed by the same single process follows the
    uninterrupted ZeRO-3 run (another world size is refused: tests/test_security.py)."""
    recipe = tiny_recipe(tmp_path)
    recipe.write_text(recipe.read_text().replace("zero_stage: 2", "zero_stage: 3"))
    reference, out = tmp_path / "reference", tmp_path / "run"
    run([sys.executable, str(HARNESS), str(recipe), f"train.output_dir={reference}"])
    run([sys.executable, str(HARNESS), str(recipe), f"train.output_dir={out}", "train.max_steps=6"])
    resumed = run([sys.executable, str(HARNESS), str(recipe), f"train.output_dir={out}"])
    assert "resumed from" in resumed.stderr
    assert losses(out) == pytest.approx(losses(reference), rel=1e-6)  # measured: equal


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_resumed_on_another_world_size_restarts_at_the_next_epoch(tmp_path):
    """Step 4 is 4 of epoch 0's 6 steps: the saved data positions belong to one rank, so two ranks start epoch 1 from
    its beginning and the step count carries on (step 5 trains on epoch 1's first global batch)."""
    recipe, out = tiny_recipe(tmp_path), tmp_path / "run"
    run(resume_cmd(1, str(recipe), f"train.output_dir={out}", "train.max_steps=4"))
    resumed = run(torchrun(2, str(recipe), f"train.output_dir={out}", "train.max_steps=6"))
    assert (
        "written 16 micro-batches per rank into epoch 0: the data stream restarts at the beginning of epoch 1 "
        "(the rest of epoch 0 is skipped)"
    ) in resumed.stderr
    records = read_metrics(out)
    assert list(records) == list(range(1, 7))
    assert [records[s]["epoch"] for s in records] == [0, 0, 0, 0, 1, 1]
    assert checkpoint.latest_tag(out / "checkpoints") == "step_00000006"
