"""Recipe system: inheritance, overrides, and every error case stopping with exit code 2 and a named culprit."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mfvideo.config import Recipe, RecipeError, derive_batch_split, load_recipe, recipe_to_yaml, save_recipe
from mfvideo.config.schema import TrainConfig

REPO = Path(__file__).resolve().parent.parent


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def chain(tmp_path):
    """grand (root) <- parent (in a sub-folder) <- child: two levels of inheritance."""
    write(
        tmp_path / "common" / "grand.yaml",
        """
        data: {train: "shards/a-{000000..000003}.tar", num_frames: 16}
        optim: {lr: 8.0e-4, epochs: 300}
        train: {global_batch_size: 256, micro_batch_size: 4}
    """,
    )
    write(
        tmp_path / "common" / "parent.yaml",
        """
        base: grand.yaml
        optim: {lr: 6.0e-4}
        model: {arch: mvit_l}
    """,
    )
    return write(
        tmp_path / "child.yaml",
        """
        base: common/parent.yaml
        optim: {epochs: 75}
    """,
    )


def test_two_levels_of_inheritance(chain):
    recipe = load_recipe(chain)
    assert isinstance(recipe, Recipe)
    assert recipe.data.train == "shards/a-{000000..000003}.tar"  # from the root
    assert recipe.optim.lr == pytest.approx(6e-4)  # parent overrides root
    assert recipe.optim.epochs == 75  # child overrides root
    assert recipe.model.arch == "mvit_l"  # parent only
    assert recipe.optim.weight_decay == pytest.approx(0.05)  # schema default untouched


def test_command_line_overrides_win_and_are_typed(chain):
    recipe = load_recipe(
        chain,
        [
            "optim.lr=1e-3",
            "train.micro_batch_size=8",
            "data.flip=false",
            "data.train_crop_area=[0.08, 1.0]",
            "model.init=/ckpt/pt.pt",
        ],
    )
    assert recipe.optim.lr == pytest.approx(1e-3)
    assert recipe.train.micro_batch_size == 8
    assert recipe.data.flip is False
    assert recipe.data.train_crop_area == [0.08, 1.0]
    assert recipe.model.init == "/ckpt/pt.pt"


def test_resolved_recipe_round_trips(chain, tmp_path):
    recipe = load_recipe(chain, ["optim.lr=2e-4"])
    saved = save_recipe(recipe, tmp_path / "out")
    assert saved.read_text() == recipe_to_yaml(recipe)
    assert load_recipe(saved) == recipe


@pytest.mark.parametrize(
    "text, overrides, expect",
    [
        ("data: {train: x, num_framez: 8}", [], ["num_framez", "leaf.yaml"]),
        ("data: {train: x, num_frames: sixteen}", [], ["data.num_frames", "leaf.yaml"]),
        ("data: {num_frames: 8}", [], ["data.train", "leaf.yaml"]),
        ("colour: {x: 1}", [], ["colour", "leaf.yaml"]),
        ("data: {train: x}", ["optim.lrr=1"], ["optim.lrr", "command-line override"]),
        ("data: {train: x}", ["train.micro_batch_size=four"], ["train.micro_batch_size", "command-line override"]),
        ("data: {train: x}", ["optim.lr"], ["optim.lr", "section.key=value"]),
        ("base: nowhere.yaml\ndata: {train: x}", [], ["nowhere.yaml", "leaf.yaml"]),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, overrides, expect):
    leaf = write(tmp_path / "leaf.yaml", text)
    with pytest.raises(RecipeError) as err:
        load_recipe(leaf, overrides)
    for fragment in expect:
        assert fragment in str(err.value)


def test_error_in_a_base_names_the_base(tmp_path):
    write(tmp_path / "base.yaml", "optim: {lr: fast}")
    leaf = write(tmp_path / "leaf.yaml", "base: base.yaml\ndata: {train: x}")
    with pytest.raises(RecipeError, match=r"base\.yaml: key 'optim\.lr'"):
        load_recipe(leaf)


def test_cycle_between_bases_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml")
    leaf = write(tmp_path / "b.yaml", "base: a.yaml")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(leaf)


def test_entry_point_exits_2_before_any_work(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", "data: {train: x}\ntrain: {zero_stag: 2}")
    code = "import sys; from mfvideo.config import load_recipe_or_exit; load_recipe_or_exit(sys.argv[1]); print('WORK')"
    proc = subprocess.run([sys.executable, "-c", code, str(leaf)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "WORK" not in proc.stdout
    assert "zero_stag" in proc.stderr and "leaf.yaml" in proc.stderr


@pytest.mark.parametrize("global_batch, micro, world, accumulation", [(256, 4, 64, 1), (256, 4, 8, 8), (8, 2, 2, 2)])
def test_batch_split_is_derived_from_the_global_batch(global_batch, micro, world, accumulation):
    split = derive_batch_split(TrainConfig(global_batch_size=global_batch, micro_batch_size=micro), world)
    assert split.accumulation_steps == accumulation
    assert split.micro_batch_size * split.accumulation_steps * split.world_size == global_batch


def test_batch_split_that_does_not_divide_names_the_keys():
    with pytest.raises(ValueError, match=r"train\.global_batch_size=256.*train\.micro_batch_size=6"):
        derive_batch_split(TrainConfig(global_batch_size=256, micro_batch_size=6), 8)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path):
    load_recipe(path)


def test_k400_pretraining_recipes_carry_the_paper_values():
    for name, arch in [("k400_mvit_s_pt.yaml", "mvit_s"), ("k400_mvit_l_pt.yaml", "mvit_l")]:
        recipe = load_recipe(REPO / "recipes" / name)
        assert recipe.model.arch == arch and recipe.model.task == "pretrain" and recipe.model.drop_path == 0
        assert (recipe.data.num_frames, recipe.data.sampling_rate, recipe.data.crop_size) == (16, 4, 224)
        assert recipe.data.train_crop_area == [0.5, 1.0] and recipe.data.flip
        assert (recipe.mask.mode, recipe.mask.ratio) == ("cube", 0.4)
        assert recipe.train.global_batch_size == 256 and recipe.optim.lr == pytest.approx(8e-4)
        assert recipe.optim.clip_grad == pytest.approx(0.02) and recipe.optim.weight_decay == pytest.approx(0.05)
        assert (recipe.optim.epochs, recipe.optim.warmup_epochs) == (300, 10)
        assert recipe.optim.warmup_start_lr == pytest.approx(1e-6) and recipe.optim.min_lr == pytest.approx(1e-6)


# Values the schema's ranges or the allowed sets reject: each stops tools/train.py and tools/test.py with exit code 2
# naming the key and the recipe file, before any process group, model or output folder exists.
OUT_OF_RANGE = [
    ("optim.lr=-1.0e-3", "optim.lr"),
    ("optim.warmup_start_lr=-1.0e-4", "optim.warmup_start_lr"),
    ("optim.min_lr=-1.0e-6", "optim.min_lr"),
    ("optim.epochs=0", "optim.epochs"),
    ("train.checkpoint_every=0", "train.checkpoint_every"),
    ("train.log_every=0", "train.log_every"),
    ("mask.ratio=1.5", "mask.ratio"),
    ("mask.ratio=0", "mask.ratio"),
    ("data.num_frames=5", "data.num_frames"),
    ("data.crop_size=100", "data.crop_size"),
    ("augment.erase_prob=1.5", "augment.erase_prob"),
    ("augment.mix_prob=-0.1", "augment.mix_prob"),
    ("augment.mix_switch_prob=2", "augment.mix_switch_prob"),
    ("optim.betas=[0.9,1.5]", "optim.betas"),
    ("data.test_crops=2", "data.test_crops"),
    ("mask.mode=blob", "mask.mode"),  # outside the allowed set its stage declares (mfvideo.tasks.rules)
    ("model.arch=mvit_xl", "model.arch"),
    ("train.zero_stage=4", "train.zero_stage"),
]


@pytest.mark.parametrize("entry", ["train", "test"])
@pytest.mark.parametrize("override, key", OUT_OF_RANGE, ids=[case[0] for case in OUT_OF_RANGE])
def test_out_of_range_value_exits_2_naming_the_key_before_any_work(tmp_path, capsys, entry, override, key):
    from mfvideo.app.run import run_test, run_training

    leaf = write(tmp_path / "leaf.yaml", f"base: {REPO / 'recipes' / 'demo_pt.yaml'}\n")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        (run_training if entry == "train" else run_test)(str(leaf), [override, f"train.output_dir={out}"])
    assert stop.value.code == 2
    message = capsys.readouterr().err
    assert f"'{key}'" in message and "leaf.yaml" in message
    assert not out.exists()


def test_range_checks_stop_the_command_line_tools(tmp_path):
    leaf = write(tmp_path / "leaf.yaml", f"base: {REPO / 'recipes' / 'demo_pt.yaml'}\n")
    for tool in ("tools/train.py", "tools/test.py"):
        proc = subprocess.run(
            [sys.executable, tool, str(leaf), "optim.warmup_start_lr=-1e-4", f"train.output_dir={tmp_path / 'out'}"],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert proc.returncode == 2, proc.stderr
        assert "'optim.warmup_start_lr'" in proc.stderr and "leaf.yaml" in proc.stderr
    assert not (tmp_path / "out").exists()
