"""Decoding, frame sampling and spatial transforms of the clip stream, one piece at a time."""

import numpy as np
import pytest
import torch

from mfvideo.data import sampling
from mfvideo.data.clips import EvalClips, TemporalSampling, TrainClips
from mfvideo.data.decode import DecodeError, open_media
from mfvideo.data.transforms import (
    EvalTransform,
    Normalise,
    TrainTransform,
    eval_crop_boxes,
    pack_clips,
    random_resized_crop_box,
    resize_box,
)
from stream_helpers import decode_all, encode_jpg, encode_video, frames_in_order, textured_video

MEAN, STD = [0.45, 0.45, 0.45], [0.225, 0.225, 0.225]


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    data = encode_video(70)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    path.write_bytes(data)
    return data, path


# ----- sampling -------------------------------------------------------------------------------------------------


def test_stride_scales_with_fps():
    assert sampling.clip_stride(4, 30.0, 30.0) == 4
    assert sampling.clip_stride(4, 60.0, 30.0) == 8
    assert sampling.clip_stride(4, 15.0, 30.0) == 2
    assert sampling.clip_stride(4, 0.0, 30.0) == 4  # unknown fps: nominal stride


def test_random_clip_spans_sixteen_by_four_and_stays_inside():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        clip = sampling.random_clip(300, 16, 4.0, rng)
        assert clip.dtype == np.int64 and len(clip) == 16
        assert np.all(np.diff(clip) == 4) and clip[0] >= 0 and clip[-1] <= 299
        starts.add(int(clip[0]))
    assert min(starts) < 20 and max(starts) > 216  # start uniform over [0, 300 - 64]


def test_random_clip_follows_fps_scaled_stride():
    clip = sampling.random_clip(1000, 16, sampling.clip_stride(4, 60.0, 30.0), np.random.default_rng(1))
    assert np.all(np.diff(clip) == 8)


def test_short_video_repeats_its_last_frame():
    clip = sampling.random_clip(20, 16, 4.0, np.random.default_rng(0))
    assert clip[0] == 0 and clip.max() == 19
    assert list(clip[5:]) == [19] * 11
    assert list(sampling.random_clip(1, 8, 2.0, np.random.default_rng(0))) == [0] * 8


def test_uniform_clips_are_evenly_spaced():
    clips = sampling.uniform_clips(164, 16, 4.0, 5)  # free span 100: starts 10, 30, 50, 70, 90
    assert [int(c[0]) for c in clips] == [10, 30, 50, 70, 90]
    assert [int(c[0]) for c in sampling.uniform_clips(164, 16, 4.0, 1)] == [50]


def test_segments_take_one_frame_per_segment():
    rng = np.random.default_rng(0)
    for _ in range(50):
        frames = sampling.random_segments(48, 16, rng)
        assert np.all(frames // 3 == np.arange(16))  # segment i covers frames 3i..3i+2
    assert list(sampling.uniform_segments(48, 16, 1)[0]) == list(3 * np.arange(16) + 1)
    short = sampling.uniform_segments(5, 16, 1)[0]
    assert short.min() >= 0 and short.max() == 4 and np.all(np.diff(short) >= 0)


def test_sampling_is_a_function_of_the_generator():
    a = sampling.random_clip(500, 16, 4.0, np.random.default_rng(42))
    b = sampling.random_clip(500, 16, 4.0, np.random.default_rng(42))
    assert np.array_equal(a, b)


def test_frame_union_maps_every_clip_back():
    clips = [np.array([0, 4, 8]), np.array([4, 8, 12]), np.array([2, 2, 2])]
    union, positions = sampling.frame_union(clips)
    assert list(union) == [0, 2, 4, 8, 12]
    for clip, pos in zip(clips, positions):
        assert np.array_equal(union[pos], clip)


# ----- decoding -------------------------------------------------------------------------------------------------


def test_decoded_frames_are_the_frames_the_indices_name(video_file):
    data, _ = video_file
    media = open_media(data, "mp4", 70)
    assert media.num_frames == 70 and media.fps == pytest.approx(30.0)
    indices = np.array([0, 3, 17, 40, 69])
    frames = media.frames(indices)
    assert frames.dtype == torch.uint8 and frames.shape == (5, 48, 64, 3)
    assert np.array_equal(frames.numpy(), frames_in_order(data)[indices])
    assert not torch.equal(frames[0], frames[1])  # fixture frames really differ


@pytest.fixture(scope="module")
def shard_video():
    """100 frames (3.3 s) as make_shards encodes them: keyframes at 0, 30, 60, 90, B-frames no frame references."""
    data = textured_video(100)
    return data, frames_in_order(data)


def test_shard_encoding_puts_three_unreferenced_b_frames_between_reference_frames(shard_video):
    data, truth = shard_video
    reference_pts = sorted(decode_all(data, skip_non_reference=True))
    all_pts = sorted(decode_all(data))
    references = [all_pts.index(pts) for pts in reference_pts]
    # From each keyframe (every 30 frames) every 4th frame is a reference; the frame before the next keyframe too.
    expected = sorted({gop + k for gop in (0, 30, 60, 90) for k in range(0, 30, 4) if gop + k < 100} | {29, 59, 89, 99})
    assert references == expected


@pytest.mark.parametrize("phase", [0, 1, 2, 3])
def test_clips_from_shard_encoded_video_show_exactly_their_frames(shard_video, phase):
    """16×4 clips at every start phase against the reference pattern, each from a fresh media (as the loader
    opens one per sample), and several decodes from one media, unsorted and repeated indices included."""
    data, truth = shard_video
    for start in range(phase, 100 - 61, 4 * 3):
        indices = start + 4 * np.arange(16)
        assert np.array_equal(open_media(data, "mp4", 100).frames(indices).numpy(), truth[indices]), start
    media = open_media(data, "mp4", 100)
    for indices in ([99, 0, 29, 30, 31, 29], [phase], [59 + phase, 60, 61, 2 + phase]):
        assert np.array_equal(media.frames(np.array(indices)).numpy(), truth[indices]), indices


def test_unrequested_non_reference_frames_are_skipped(shard_video):
    """A clip of reference frames makes the decoder produce the reference frames from its keyframe to its end and
    nothing else (give or take what its reordering delay holds back or lets through); one of B-frames adds just its
    own frames. Decoding all from the keyframe would produce 29 frames for either."""
    data, _ = shard_video
    for keyframe in (0, 30, 60):  # the decode starts at the clip's own keyframe
        on_references = open_media(data, "mp4", 100)
        on_references.frames(keyframe + np.arange(0, 29, 4))  # the 8 reference frames of that GOP
        assert 8 <= on_references.frames_decoded <= 8 + 2, keyframe
    on_b_frames = open_media(data, "mp4", 100)
    on_b_frames.frames(np.arange(1, 29, 4))  # 7 B-frames between references 0, 4, …, 28
    assert 7 + 7 <= on_b_frames.frames_decoded <= 8 + 7 + 2
    everything = open_media(data, "mp4", 100)
    everything.frames(np.arange(100))
    assert everything.frames_decoded == 100


def test_indices_past_the_end_are_clamped(video_file):
    data, _ = video_file
    media = open_media(data, "mp4", 60)  # shard records fewer frames than the container claims: trust the smaller
    assert media.num_frames == 60
    frames = media.frames(np.array([58, 59, 60, 500]))
    assert torch.equal(frames[2], frames[1]) and torch.equal(frames[3], frames[1])


def test_corrupt_media_raises_decode_error():
    with pytest.raises(DecodeError, match="cannot open video"):
        open_media(b"garbage" * 50, "mp4")
    with pytest.raises(DecodeError, match="cannot decode image"):
        open_media(b"garbage" * 50, "jpg")
    with pytest.raises(DecodeError, match="unsupported media extension 'gif'"):
        open_media(b"GIF89a", "gif")


def test_image_is_a_one_frame_video():
    media = open_media(encode_jpg(), "jpg")
    assert media.num_frames == 1
    frames = media.frames(np.zeros(1, dtype=np.int64))
    assert frames.shape == (1, 48, 64, 3) and frames.dtype == torch.uint8


# ----- transforms -----------------------------------------------------------------------------------------------


def test_random_resized_crop_box_obeys_area_and_aspect():
    rng = np.random.default_rng(0)
    for _ in range(300):
        box = random_resized_crop_box(240, 320, (0.5, 1.0), (0.75, 4 / 3), rng)
        assert 0 <= box.top and box.top + box.height <= 240 and 0 <= box.left and box.left + box.width <= 320
        area = box.height * box.width / (240 * 320)
        assert 0.49 <= area <= 1.0
        assert 0.74 <= box.width / box.height <= 1.35


def test_three_crops_cover_start_centre_end_of_the_long_side():
    boxes = eval_crop_boxes(240, 320, 240, 224, 3)
    assert [(b.top, b.left, b.height) for b in boxes] == [(8, 0, 224), (8, 48, 224), (8, 96, 224)]
    portrait = eval_crop_boxes(320, 240, 240, 224, 3)
    assert [(b.top, b.left) for b in portrait] == [(0, 8), (48, 8), (96, 8)]
    scaled = eval_crop_boxes(480, 640, 240, 224, 1)[0]  # short side 480 → 240: crop 224 is 448 source pixels
    assert (scaled.top, scaled.left, scaled.height, scaled.width) == (16, 96, 448, 448)


def test_resize_box_copies_only_the_box_and_keeps_uint8():
    frames = torch.arange(2 * 6 * 8 * 3, dtype=torch.uint8).reshape(2, 6, 8, 3)
    box = eval_crop_boxes(6, 8, 6, 6, 1)[0]
    out = resize_box(frames, box, 6)
    assert out.shape == (2, 3, 6, 6) and out.dtype == torch.uint8
    assert torch.equal(out, frames[:, :, 1:7].permute(0, 3, 1, 2))
    picked = resize_box(frames, box, 6, positions=torch.tensor([1, 1, 0]))
    assert torch.equal(picked, out[[1, 1, 0]])
    smaller = resize_box(frames, box, 3)
    assert smaller.shape == (2, 3, 3, 3) and smaller.dtype == torch.uint8


def test_clips_pack_into_b_c_t_h_w_and_normalise_with_recipe_statistics():
    clip = torch.zeros(4, 3, 5, 5, dtype=torch.uint8)
    clip[2, 1] = 255  # frame 2, channel 1
    packed = pack_clips([clip, torch.full_like(clip, 255)])
    assert packed.shape == (2, 3, 4, 5, 5) and packed.dtype == torch.uint8
    assert packed[0, 1, 2].eq(255).all() and packed[0, 1, 1].eq(0).all() and packed[0, 0, 2].eq(0).all()
    batch = Normalise(MEAN, STD)(packed)
    assert batch.shape == (2, 3, 4, 5, 5) and batch.dtype == torch.float32
    low, high = -0.45 / 0.225, (1 - 0.45) / 0.225
    assert torch.allclose(batch[0, 1, 2], torch.full((5, 5), high)) and torch.allclose(
        batch[0, 0, 2], torch.full((5, 5), low)
    )
    assert torch.allclose(batch[1], torch.full_like(batch[1], high))
    per_channel = Normalise([0.0, 0.5, 1.0], [1.0, 0.5, 0.25])(torch.full((1, 3, 1, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(per_channel.flatten(), torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)


def test_train_transform_treats_every_frame_alike():
    frame = torch.randint(0, 255, (1, 48, 64, 3), dtype=torch.uint8)
    frames = frame.repeat(8, 1, 1, 1)
    transform = TrainTransform(32, (0.3, 1.0), (0.75, 4 / 3), flip=True)
    flips = set()
    for seed in range(20):
        clip = transform(frames, np.random.default_rng(seed))
        assert clip.shape == (8, 3, 32, 32) and clip.dtype == torch.uint8
        assert torch.equal(clip[:1].expand_as(clip), clip)
        box_rng = np.random.default_rng(seed)
        plain = resize_box(frames, random_resized_crop_box(48, 64, (0.3, 1.0), (0.75, 4 / 3), box_rng), 32)
        flipped = box_rng.uniform() < 0.5
        flips.add(flipped)
        assert torch.equal(clip, plain.flip(-1) if flipped else plain)
    assert flips == {True, False}


def test_flip_off_never_flips():
    frames = torch.randint(0, 255, (2, 48, 64, 3), dtype=torch.uint8)
    transform = TrainTransform(32, (1.0, 1.0), (64 / 48, 64 / 48), flip=False)
    expected = resize_box(frames, random_resized_crop_box(48, 64, (1, 1), (4 / 3, 4 / 3), np.random.default_rng(0)), 32)
    for seed in range(10):
        assert torch.equal(transform(frames, np.random.default_rng(seed)), expected)


# ----- a video's clips ------------------------------------------------------------------------------------------


def test_test_views_show_the_frames_at_their_indices(video_file):
    data, _ = video_file
    temporal = TemporalSampling(8, 4, 30.0, "random")
    maker = EvalClips(temporal, EvalTransform(48, 48, 3), num_clips=2)
    clips = maker(open_media(data, "mp4", 70), np.random.default_rng(0))
    assert [c.view for c in clips] == list(range(6))
    truth = torch.from_numpy(frames_in_order(data))
    for clip in clips:
        expected_indices = sampling.uniform_clips(70, 8, 4.0, 2)[clip.view // 3]
        assert np.array_equal(clip.frame_indices, expected_indices)
        frames = truth[expected_indices]
        left = [0, 8, 16][clip.view % 3]
        assert torch.equal(clip.video, frames[:, :, left : left + 48].permute(0, 3, 1, 2))


def test_repeated_sampling_draws_independent_clips_from_one_decode(video_file, monkeypatch):
    data, _ = video_file
    media = open_media(data, "mp4", 70)
    calls = []
    original = media.frames
    monkeypatch.setattr(media, "frames", lambda idx: calls.append(idx) or original(idx))
    maker = TrainClips(
        TemporalSampling(8, 2, 30.0, "random"), TrainTransform(32, (0.5, 1), (0.75, 4 / 3), flip=True), 4, None
    )
    clips = maker(media, np.random.default_rng(3))
    assert len(calls) == 1 and len(clips) == 4
    assert len({int(c.frame_indices[0]) for c in clips}) > 1
    assert np.array_equal(np.unique(np.concatenate([c.frame_indices for c in clips])), calls[0])
    again = maker(open_media(data, "mp4", 70), np.random.default_rng(3))
    assert all(torch.equal(a.video, b.video) for a, b in zip(clips, again))


def test_each_repeated_clip_shows_its_own_frames(video_file):
    """From the one decode of the union, every clip gets exactly the frames at its own indices."""
    data, _ = video_file

    def select(frames, rng, positions):  # no crop or flip: the clip is the decoded frames it was given
        return frames if positions is None else frames.index_select(0, positions)

    maker = TrainClips(TemporalSampling(8, 2, 30.0, "random"), select, 4, None)
    clips = maker(open_media(data, "mp4", 70), np.random.default_rng(3))
    assert len({tuple(c.frame_indices) for c in clips}) > 1
    reference = open_media(data, "mp4", 70)
    for clip in clips:
        assert clip.video.shape[0] == 8
        assert torch.equal(clip.video, reference.frames(clip.frame_indices))
