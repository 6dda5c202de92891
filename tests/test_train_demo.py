"""tools/train.py end to end on real demo shards (H.264 made by tools/make_shards.py), including kill -9 + resume."""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from launch_helpers import REPO, child_env, run_command, signal_after_step
from mfvideo.common.preemption import REQUEUE_EXIT_CODE
from mfvideo.engine import checkpoint
from mfvideo.engine.distributed import free_port
from mfvideo.engine.monitor import read_metrics
from training_helpers import losses_by_step, make_demo_shards, run_to_success, train_command, train_to_end


@pytest.fixture(scope="module")
def demo_recipe(tmp_path_factory) -> Path:
    """64 demo videos in 4 shards; 2 epochs of 8 optimizer steps (micro-batch 4 × 2 accumulation steps)."""
    root = tmp_path_factory.mktemp("demo")
    make_demo_shards(root / "train", 64, 16)
    recipe = root / "demo.yaml"
    recipe.write_text(
        textwrap.dedent(f"""
        base: {REPO / "recipes" / "demo_pt.yaml"}
        data: {{train: "{root / "train"}", num_frames: 4, crop_size: 64, num_workers: 1, shuffle_buffer: 16}}
        optim: {{epochs: 2, warmup_epochs: 0.5}}
        train: {{global_batch_size: 8, micro_batch_size: 4, checkpoint_every: 3, log_every: 1, keep_last: 2,
                 probe_every: 0}}
    """)
    )
    return recipe


@pytest.fixture(scope="module")
def uninterrupted(demo_recipe, tmp_path_factory) -> Path:
    return train_to_end(demo_recipe, tmp_path_factory.mktemp("uninterrupted") / "run")


@pytest.mark.slow
def test_single_process_pretraining_on_real_shards(uninterrupted):
    records = read_metrics(uninterrupted)
    assert list(records) == list(range(1, 17))
    assert records[16]["loss"] < records[1]["loss"]
    assert {p.name for p in (uninterrupted / "checkpoints").glob("step_*")} == {"step_00000015", "step_00000016"}
    assert (uninterrupted / "loss.png").stat().st_size > 0 and (uninterrupted / "model.pt").is_file()
    assert "data:" in (uninterrupted / "recipe.yaml").read_text()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_losses(demo_recipe, uninterrupted, tmp_path):
    out = tmp_path / "run"
    job = signal_after_step(train_command(demo_recipe, out), out, 5, signal.SIGKILL)  # past the step-3 checkpoint
    job.communicate()
    killed_at = max(read_metrics(out))
    assert killed_at < 16

    resumed = run_to_success(train_command(demo_recipe, out))
    assert "resumed from" in resumed.stderr
    assert losses_by_step(out) == pytest.approx(losses_by_step(uninterrupted), rel=1e-6, abs=0)


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_the_step_and_asks_for_a_requeue(demo_recipe, uninterrupted, tmp_path):
    """SIGTERM to the whole process group (as Slurm sends it, loader workers included) during epoch 0: the step
    finishes, its checkpoint is written (periodic ones are off, so it is the preemption's), the exit code asks for a
    requeue, and the rerun's losses are those of the uninterrupted run."""
    out = tmp_path / "run"
    command = train_command(demo_recipe, out, "train.checkpoint_every=1000")
    job = signal_after_step(command, out, 2, signal.SIGTERM)
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == REQUEUE_EXIT_CODE, stderr[-4000:]
    stopped_at = max(read_metrics(out))
    assert 2 <= stopped_at < 8, "the preemption must land inside epoch 0 (steps 1-8)"
    assert checkpoint.latest_tag(out / "checkpoints") == checkpoint.tag_for(stopped_at)
    assert f"preempted after step {stopped_at} of 16" in stderr

    resumed = run_to_success(command)
    assert f"resumed from {out / 'checkpoints' / checkpoint.tag_for(stopped_at)}" in resumed.stderr
    assert losses_by_step(out) == pytest.approx(losses_by_step(uninterrupted), rel=1e-6, abs=0)


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_names_its_folder_and_the_free_space(demo_recipe, tmp_path):
    """A file-size limit (RLIMIT_FSIZE, 1 MB: below the model's checkpoint shard) makes the checkpoint's writes fail
    the way a full disk does, inside DeepSpeed's save."""
    out = tmp_path / "run"

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

    proc = run_command(train_command(demo_recipe, out, "train.max_steps=1"), preexec_fn=limit_file_size)
    assert proc.returncode == 1
    assert f"cannot write checkpoint {out / 'checkpoints' / checkpoint.tag_for(1)} on rank 0 (" in proc.stderr
    assert re.search(r"\(\d+\.\d\d GiB free there\)", proc.stderr)
    assert checkpoint.latest_tag(out / "checkpoints") is None


@pytest.mark.slow
@pytest.mark.parametrize(
    "change, env, expect",
    [
        (["train.micro_batch_size=2"], {}, "train.micro_batch_size is 2 but checkpoint {} was written with 4"),
        (["data.num_workers=2"], {}, "data.num_workers is 2 but checkpoint {} was written with 1"),
    ],
)
def test_resume_with_another_layout_is_refused_before_any_work_naming_both_values(
    demo_recipe, uninterrupted, change, env, expect
):
    before = {path: path.stat().st_mtime_ns for path in uninterrupted.rglob("*")}
    proc = run_command(train_command(demo_recipe, uninterrupted, *change), 300, extra_env=env)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert expect.format(uninterrupted / "checkpoints" / checkpoint.tag_for(16)) in proc.stderr
    assert {path: path.stat().st_mtime_ns for path in uninterrupted.rglob("*")} == before


@pytest.mark.slow
def test_a_resume_on_two_processes_passes_the_checks_and_loads_the_universal_checkpoint(
    demo_recipe, uninterrupted, tmp_path
):
    """tools/train.py under torchrun on a copy of the finished 1-process run: the world size change is not refused,
    rank 0 converts its step-16 checkpoint, both ranks load it, and no step is left to train."""
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    proc = run_to_success(train_command(demo_recipe, out, nproc=2))
    assert "written by 1 processes, 2 run now: resuming from its universal form" in proc.stderr
    assert (out / "checkpoints" / checkpoint.tag_for(16) / "universal" / "zero").is_dir()
    assert list(read_metrics(out)) == list(range(1, 17))


@pytest.mark.slow
def test_sigusr1_to_one_rank_of_two_stops_both_after_the_same_step(demo_recipe, tmp_path):
    """Two processes started as `srun` starts them (RANK/WORLD_SIZE set, no launcher); SIGUSR1 reaches only rank 1.
    The flag travels on the step's all-reduce, so both finish that step, write one checkpoint together and exit 75."""
    out, port = tmp_path / "run", free_port()
    ranks = [
        subprocess.Popen(
            train_command(demo_recipe, out, "train.checkpoint_every=1000"),
            cwd=REPO,
            env={
                **child_env(),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        deadline = time.monotonic() + 300
        while max(read_metrics(out), default=0) < 2:
            assert all(r.poll() is None for r in ranks) and time.monotonic() < deadline, "training ended too early"
            time.sleep(0.05)
        ranks[1].send_signal(signal.SIGUSR1)
        logs = [r.communicate(timeout=300)[1] for r in ranks]
    finally:
        for r in ranks:
            if r.poll() is None:
                r.kill()
    assert [r.returncode for r in ranks] == [REQUEUE_EXIT_CODE] * 2, logs[0][-3000:] + logs[1][-3000:]
    stopped_at = max(read_metrics(out))
    assert stopped_at < 8  # 64 clips / global batch 8: epoch 0 is steps 1-8
    tag = checkpoint.tag_for(stopped_at)
    assert checkpoint.latest_tag(out / "checkpoints") == tag
    assert {p.name for p in (out / "checkpoints" / tag).glob("rank_*.pt")} == {"rank_0.pt", "rank_1.pt"}
    assert "preemption (SIGUSR1 received here)" in logs[1] and "preemption (signal on another rank)" in logs[0]
