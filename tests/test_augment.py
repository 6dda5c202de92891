"""Fine-tuning augmentations on real decoded video: RandAugment (per clip, uint8, loader side), mixup/CutMix and
random erasing (per batch, on the normalised video), the soft-target loss."""

import re
from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from mfvideo.data.augment import INCREASING_OPS, OPS, PLAIN_OPS, DrawnOp, RandAugment, apply_op
from mfvideo.data.batch import MixupCutmix, RandomErasing
from mfvideo.data.decode import open_media
from mfvideo.data.transforms import Normalise, TrainTransform
from mfvideo.models.classifier import soft_target_cross_entropy
from stream_helpers import encode_video

MEAN, STD = [0.45, 0.45, 0.45], [0.225, 0.225, 0.225]


@lru_cache(maxsize=None)
def decoded_frames(seed: int = 0, num_frames: int = 8) -> torch.Tensor:
    """uint8 T×H×W×3 frames of a real H.264 video (64×48, a moving square over noise, brightness ramp)."""
    media = open_media(encode_video(num_frames, width=64, height=48, seed=seed), "mp4")
    return media.frames(np.arange(num_frames))


def real_clip(seed: int = 0, num_frames: int = 8) -> torch.Tensor:
    """uint8 T×C×H×W, as `TrainTransform` hands clips to RandAugment."""
    return decoded_frames(seed, num_frames).permute(0, 3, 1, 2).contiguous()


def real_batch(num_clips: int = 4) -> torch.Tensor:
    """Normalised float32 B×C×T×H×W of different real videos; clip b is shifted by 10·b so that every pixel
    tells which clip it came from."""
    clips = torch.stack([real_clip(seed).transpose(0, 1) for seed in range(num_clips)])
    video = Normalise(MEAN, STD)(clips)
    return video + 10.0 * torch.arange(num_clips, dtype=torch.float32).view(-1, 1, 1, 1, 1)


# ----- RandAugment ----------------------------------------------------------------------------------------------


def test_spec_parsing():
    official = RandAugment.from_spec("rand-m7-mstd0.5-inc1")
    assert official == RandAugment(
        ops=INCREASING_OPS, num_ops=2, magnitude=7.0, magnitude_std=0.5, magnitude_max=10.0, prob=0.5
    )
    other = RandAugment.from_spec("rand-n3-mmax12-inc0-p0.7-mstd101-m9")
    assert other == RandAugment(
        ops=PLAIN_OPS, num_ops=3, magnitude=9.0, magnitude_std=float("inf"), magnitude_max=12.0, prob=0.7
    )
    assert RandAugment.from_spec("rand") == RandAugment(ops=PLAIN_OPS, num_ops=2, magnitude=10.0)
    assert len(PLAIN_OPS) == len(INCREASING_OPS) == 15 and set(PLAIN_OPS) | set(INCREASING_OPS) == set(OPS)


@pytest.mark.parametrize(
    "spec, part",
    [
        ("rnd-m7", "'rnd'"),
        ("rand-m7-x3", "'x3'"),
        ("rand-m7-m8", "'m'"),
        ("rand-mfoo", "'mfoo'"),
        ("rand-m7.5", "'m7.5'"),
        ("rand-n0", "'n0'"),
        ("rand-inc2", "'inc2'"),
        ("rand-p1.5", "'p1.5'"),
        ("rand-m7--n2", "''"),
        ("rand-w0", "'w0'"),
    ],
)
def test_bad_spec_names_spec_and_part(spec, part):
    with pytest.raises(ValueError, match=re.escape(repr(spec)) + ".*" + re.escape(part)):
        RandAugment.from_spec(spec)


def test_same_op_and_magnitude_on_every_frame_of_a_real_clip():
    """The clip equals each frame augmented alone with the clip's drawn ops: one op, magnitude and sign per clip,
    statistics (AutoContrast, Equalize, Contrast) per frame as Pillow computes them on one image."""
    clip = real_clip()
    randaug = RandAugment.from_spec("rand-m7-mstd0.5-inc1")
    applied = set()
    for seed in range(60):
        ops = randaug.draw(np.random.default_rng(seed))
        out = randaug(clip, np.random.default_rng(seed))
        expected = []
        for frame in clip.split(1):
            for op in ops:
                frame = apply_op(frame, op)
            expected.append(frame)
        assert torch.equal(out, torch.cat(expected)), f"seed {seed}: {ops}"
        applied.update(op.name for op in ops)
    assert len(applied) >= 12  # most of the set went through the comparison


def test_clip_of_identical_frames_stays_identical():
    frame = real_clip()[3:4]
    clip = frame.expand(6, -1, -1, -1).contiguous()
    randaug = RandAugment.from_spec("rand-m9-n3-mstd1-p1-inc1")  # 3 ops per clip, always applied
    changed = 0
    for seed in range(150):
        out = randaug(clip, np.random.default_rng(seed))
        assert torch.equal(out, out[:1].expand_as(out)), f"seed {seed}"
        changed += not torch.equal(out, clip)
    assert changed > 140


# timm draws a random sign for these (the increasing enhancements: a factor above or below 1)
SIGNED_OPS = {
    "Rotate",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
}


@pytest.mark.parametrize("spec, op_set", [("rand-m7-mstd0.5-inc1", INCREASING_OPS), ("rand-m7-mstd0.5", PLAIN_OPS)])
def test_every_op_of_the_set_is_drawn_and_changes_the_clip(spec, op_set):
    clip = real_clip()
    randaug = RandAugment.from_spec(spec)
    drawn: dict[str, list] = {}
    for seed in range(400):
        for op in randaug.draw(np.random.default_rng(seed)):
            drawn.setdefault(op.name, []).append(op.argument)
    assert set(drawn) == set(op_set)
    for name, arguments in drawn.items():
        assert not torch.equal(apply_op(clip, DrawnOp(name, arguments[0])), clip), name
        if name in SIGNED_OPS:  # both directions drawn
            assert min(arguments) < (1.0 if "Increasing" in name else 0.0) < max(arguments), name
    # m7 ± 0.5 noise, clipped to [0, 10]: rotation angles near 21°, never beyond 30°
    angles = np.abs(drawn["Rotate"])
    assert 18 < angles.mean() < 24 and angles.max() <= 30 and angles.std() > 0.5


def test_ops_applied_with_probability_p():
    randaug = RandAugment.from_spec("rand-m7-n2")
    counts = [len(randaug.draw(np.random.default_rng(seed))) for seed in range(2000)]
    assert abs(np.mean(counts) - 1.0) < 0.06  # 2 ops × p = 0.5
    assert all(len(RandAugment.from_spec("rand-n3-p1").draw(np.random.default_rng(s))) == 3 for s in range(20))


def test_randaugment_output_and_determinism():
    clip = real_clip()
    randaug = RandAugment.from_spec("rand-m9-n4-mstd0.5-p1")
    outputs = []
    for seed in range(5):
        out = randaug(clip, np.random.default_rng(seed))
        assert out.dtype == torch.uint8 and out.shape == clip.shape
        assert torch.equal(out, randaug(clip, np.random.default_rng(seed)))
        outputs.append(out)
    assert not torch.equal(outputs[0], outputs[1])


def test_train_transform_applies_randaugment_after_crop_and_flip():
    frames = decoded_frames()
    randaug = RandAugment.from_spec("rand-m7-mstd0.5-p1-inc1")
    plain = TrainTransform(32, (0.08, 1.0), (0.75, 4 / 3), flip=True)
    augmented = TrainTransform(32, (0.08, 1.0), (0.75, 4 / 3), flip=True, rand_augment=randaug)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        crop = plain(frames, rng)
        assert torch.equal(augmented(frames, np.random.default_rng(seed)), randaug(crop, rng))


# ----- RandAugment against Pillow, on one frame -------------------------------------------------------------------


def _pil(frame: torch.Tensor) -> Image.Image:
    return Image.fromarray(frame.permute(1, 2, 0).numpy())


def _frames_for_pillow() -> list[torch.Tensor]:
    """A real decoded frame; one with a constant channel and few levels (Pillow's identity cases); a 2×300 one
    whose equalisation table runs past 255 (one pixel at 5, 299 at 10, 300 at 200: Pillow clips it)."""
    frame = real_clip()[5]
    sparse = (frame & 0xC0).clone()
    sparse[1] = 77
    strip = torch.full((3, 2, 300), 200, dtype=torch.uint8)
    strip[:, 0, :299] = 10
    strip[:, 0, 299] = 5
    return [frame, sparse, strip]


def _solarize_add_pillow(image: Image.Image, addition: int) -> Image.Image:
    """timm's solarize_add."""
    lut = [min(255, i + addition) if i < 128 else i for i in range(256)]
    return image.point(lut * 3)


COLOUR_CASES = [
    ("AutoContrast", None, ImageOps.autocontrast),
    ("Equalize", None, ImageOps.equalize),
    ("Invert", None, ImageOps.invert),
    ("Posterize", 1, ImageOps.posterize),
    ("Posterize", 2, ImageOps.posterize),
    ("PosterizeIncreasing", 4, ImageOps.posterize),
    ("Solarize", 0, ImageOps.solarize),
    ("Solarize", 179, ImageOps.solarize),
    ("SolarizeIncreasing", 77, ImageOps.solarize),
    ("SolarizeAdd", 77, _solarize_add_pillow),
    *[
        (name, factor, lambda image, f, enhancer=enhancer: enhancer(image).enhance(f))
        for name, enhancer in [
            ("Color", ImageEnhance.Color),
            ("Contrast", ImageEnhance.Contrast),
            ("Brightness", ImageEnhance.Brightness),
            ("Sharpness", ImageEnhance.Sharpness),
        ]
        for factor in (0.1, 0.37, 1.0, 1.63, 1.9)
    ],
]


@pytest.mark.parametrize("name, argument, pillow", COLOUR_CASES)
def test_colour_ops_equal_pillow(name, argument, pillow):
    for frame in _frames_for_pillow():
        image = _pil(frame)
        expected = np.asarray(pillow(image) if argument is None else pillow(image, argument))
        out = apply_op(frame[None], DrawnOp(name, argument))[0].permute(1, 2, 0).numpy()
        assert np.array_equal(out, expected), f"{name}({argument}): {np.abs(out.astype(int) - expected).max()}"


def test_posterize_to_zero_bits_is_black():
    """timm's posterize levels reach 0 bits (Posterize below m2.5, PosterizeIncreasing at m10): black, as the
    Pillow PySlowFast ran with gave; current Pillow refuses 0 bits."""
    clip = real_clip()
    assert torch.equal(apply_op(clip, DrawnOp("PosterizeIncreasing", 0)), torch.zeros_like(clip))
    assert torch.equal(apply_op(clip, DrawnOp("Posterize", 8)), clip)


@pytest.mark.parametrize(
    "name, argument",
    [
        ("Rotate", 21.7),
        ("Rotate", -8.0),
        ("ShearX", 0.21),
        ("ShearX", -0.3),
        ("ShearY", 0.17),
        ("TranslateXRel", 0.31),
        ("TranslateXRel", -0.4),
        ("TranslateYRel", 0.22),
        ("TranslateYRel", -0.13),
    ],
)
def test_warps_match_pillow_bilinear_within_one_level(name, argument):
    """Pillow's geometry and fill (grey 128 where the source point leaves the frame); ours rounds where Pillow
    truncates, hence ±1."""
    frame = _frames_for_pillow()[0]
    image = _pil(frame)
    width, height = image.size
    if name == "Rotate":
        expected = image.rotate(argument, resample=Image.BILINEAR, fillcolor=(128, 128, 128))
    else:
        matrix = {
            "ShearX": (1, argument, 0, 0, 1, 0),
            "ShearY": (1, 0, 0, argument, 1, 0),
            "TranslateXRel": (1, 0, argument * width, 0, 1, 0),
            "TranslateYRel": (1, 0, 0, 0, 1, argument * height),
        }[name]
        expected = image.transform(image.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=(128, 128, 128))
    expected = np.asarray(expected).astype(int)
    out = apply_op(frame[None], DrawnOp(name, argument))[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(out - expected).max() <= 1
    filled = (expected == 128).all(axis=2)
    assert filled.mean() > 0.02 and (out[filled] == 128).all()


# ----- mixup / CutMix -------------------------------------------------------------------------------------------

LABELS = torch.tensor([3, 0, 7, 5])
NUM_CLASSES = 10


def _lam_from_targets(targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """λ per clip from its own label's target (labels differ from their partners')."""
    off = smoothing / NUM_CLASSES
    return (targets[torch.arange(len(LABELS)), LABELS] - off) / (1 - smoothing)


def test_cutmix_pastes_one_box_on_every_frame_and_lambda_is_its_area():
    original = real_batch()
    cutmix = MixupCutmix(NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=1.0)
    clipped = 0
    for seed in range(40):
        video, targets = cutmix(original.clone(), LABELS, np.random.default_rng(seed))
        from_partner = video == original.flip(0)
        assert torch.all(from_partner | (video == original))
        box = from_partner[0, 0, 0]
        assert torch.equal(from_partner, box.expand_as(from_partner))  # every clip, channel and frame
        rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
        if len(rows):
            assert box.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
            last_row, last_col = box.shape[0] - 1, box.shape[1] - 1
            clipped += bool(rows[0] == 0 or cols[0] == 0 or rows[-1] == last_row or cols[-1] == last_col)
        pasted_share = box.double().mean().item()
        assert torch.allclose(_lam_from_targets(targets, 0.1), torch.tensor(1.0 - pasted_share), atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(4), atol=1e-6)
    assert clipped > 5  # boxes cut by the frame border were among them, λ followed their area


def test_mixup_blends_with_reversed_batch_and_targets_follow():
    original = real_batch()
    mixup = MixupCutmix(NUM_CLASSES, mixup_alpha=0.8, cutmix_alpha=0.0)
    for seed in range(10):
        video, targets = mixup(original.clone(), LABELS, np.random.default_rng(seed))
        lam = _lam_from_targets(targets, 0.1)
        assert torch.allclose(lam, lam[:1].expand(4), atol=1e-6)  # one λ for the batch
        assert torch.allclose(video, lam[0] * original + (1 - lam[0]) * original.flip(0), atol=1e-5)
        partner = targets[torch.arange(4), LABELS.flip(0)]
        assert torch.allclose(partner, (1 - lam) * 0.9 + 0.01, atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(4), atol=1e-6)


def test_switch_between_mixup_and_cutmix():
    original = real_batch()
    both = MixupCutmix(NUM_CLASSES)  # MaskFeat fine-tuning: mixup 0.8, CutMix 1.0, switch 0.5
    kinds = []
    for seed in range(200):
        video, targets = both(original.clone(), LABELS, np.random.default_rng(seed))
        assert torch.allclose(targets.sum(1), torch.ones(4), atol=1e-6)
        pasted = (video == original.flip(0)) | (video == original)
        kinds.append(bool(pasted.all()))
    assert 0.4 < np.mean(kinds) < 0.6


def test_label_smoothing_without_mixing():
    original = real_batch()
    for smoothing_only in (
        MixupCutmix(NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0),
        MixupCutmix(NUM_CLASSES, prob=0.0),
    ):
        video, targets = smoothing_only(original.clone(), LABELS, np.random.default_rng(0))
        assert torch.equal(video, original)
        expected = torch.full((4, NUM_CLASSES), 0.01)
        expected[torch.arange(4), LABELS] = 0.91  # 1 − 0.1 + 0.1 / 10
        assert torch.allclose(targets, expected, atol=1e-7) and targets.dtype == torch.float32
    _, hard = MixupCutmix(NUM_CLASSES, 0.0, 0.0, label_smoothing=0.0)(
        original.clone(), LABELS, np.random.default_rng(0)
    )
    assert torch.equal(hard, F.one_hot(LABELS, NUM_CLASSES).float())


def test_mixup_is_deterministic_for_a_seed():
    original = real_batch()
    mix = MixupCutmix(NUM_CLASSES)
    first = mix(original.clone(), LABELS, np.random.default_rng(3))
    second = mix(original.clone(), LABELS, np.random.default_rng(3))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_mixup_rejects_bad_values():
    with pytest.raises(ValueError, match="switch_prob"):
        MixupCutmix(10, switch_prob=1.5)
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupCutmix(10, mixup_alpha=-1.0)
    with pytest.raises(ValueError, match="4 labels"):
        MixupCutmix(10)(real_batch(2), LABELS, np.random.default_rng(0))


# ----- random erasing -------------------------------------------------------------------------------------------


def test_random_erasing_erases_one_cube_per_clip():
    original = real_batch()
    erasing = RandomErasing(probability=1.0)
    height, width = original.shape[-2:]
    for seed in range(20):
        video = erasing(original.clone(), np.random.default_rng(seed))
        changed = video != original
        for clip, clip_changed in zip(video, changed):
            box = clip_changed.any(dim=(0, 1))
            rows, cols = box.any(1).nonzero()[:, 0], box.any(0).nonzero()[:, 0]
            box_h, box_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
            assert box.sum() == box_h * box_w == len(rows) * len(cols)  # one rectangle
            assert box_h < height and box_w < width
            assert 0.02 * height * width - height - width <= box_h * box_w <= height * width / 3 + height + width
            inside = clip[..., rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            assert clip_changed[..., rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()  # every frame
            assert 0.7 < inside.std().item() < 1.3 and abs(inside.mean().item()) < 0.3  # N(0, 1) noise
            assert not torch.equal(inside[:, 0], inside[:, 1])  # fresh noise in each frame


def test_random_erasing_probability():
    original = real_batch()
    assert torch.equal(RandomErasing(probability=0.0)(original.clone(), np.random.default_rng(0)), original)
    video = torch.zeros(2000, 1, 2, 16, 16)
    RandomErasing(probability=0.25)(video, np.random.default_rng(0))
    rate = (video != 0).flatten(1).any(1).float().mean().item()
    assert 0.22 < rate < 0.28  # ±3σ of 2000 draws


def test_random_erasing_is_deterministic_for_a_seed():
    original = real_batch()
    erasing = RandomErasing(probability=0.5)
    first = erasing(original.clone(), np.random.default_rng(9))
    assert torch.equal(first, erasing(original.clone(), np.random.default_rng(9)))
    assert not torch.equal(first, erasing(original.clone(), np.random.default_rng(10)))


# ----- loss -----------------------------------------------------------------------------------------------------


def test_soft_target_cross_entropy_matches_hard_and_smoothed_cross_entropy():
    logits = torch.randn(4, NUM_CLASSES, generator=torch.Generator().manual_seed(0))
    smoothing = MixupCutmix(NUM_CLASSES, 0.0, 0.0, label_smoothing=0.1)
    _, targets = smoothing(torch.zeros(4, 1, 1, 1, 1), LABELS, np.random.default_rng(0))
    assert torch.allclose(
        soft_target_cross_entropy(logits, targets), F.cross_entropy(logits, LABELS, label_smoothing=0.1), atol=1e-6
    )
    assert torch.allclose(
        soft_target_cross_entropy(logits, F.one_hot(LABELS, NUM_CLASSES).float()),
        F.cross_entropy(logits, LABELS),
        atol=1e-6,
    )
