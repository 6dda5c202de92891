"""HOG target (docs/design.md §2): against the straightforward formula, against scikit-image where the two
variants are made comparable, on hand-built gradients, token layout, shapes, and memory."""

import io
import math

import av
import numpy as np
import pytest
import torch
from skimage import data as skimage_data
from skimage.feature import hog as skimage_hog

from mfvideo.benchmarks.hog import benchmark_hog, format_hog_benchmark, natural_video, peak_memory_bytes
from mfvideo.targets.hog import HogTarget, gaussian_window_weights, hog_reference


def as_video(frames: np.ndarray) -> torch.Tensor:
    """T×H×W×3 uint8 frames → 1×3×T×H×W uint8, the clip as the loader ships it and the target reads it."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)


def normalised(video: torch.Tensor) -> torch.Tensor:
    """Pixel values → the backbone's input (Kinetics mean 0.45, std 0.225), float32."""
    return (video.float() / 255 - 0.45) / 0.225


@pytest.fixture(scope="module")
def decoded_frames() -> np.ndarray:
    """16 frames of a photograph panning sideways, encoded to H.264 with PyAV and decoded again."""
    photo = skimage_data.astronaut()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for t in range(16):
            crop = np.ascontiguousarray(photo[100:196, 150 + 6 * t : 278 + 6 * t])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")))
        container.mux(stream.encode())
    buffer.seek(0)
    with av.open(buffer) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert frames.shape == (16, 96, 128, 3)
    return frames


def photographs() -> list[np.ndarray]:
    """Real RGB photographs cropped to multiples of 16 pixels."""
    return [skimage_data.astronaut()[:256, 128:384], skimage_data.chelsea()[:288, :448]]


# ---------------------------------------------------------------------------------------------------
# Against the straightforward formula


@pytest.mark.parametrize("photo", photographs(), ids=["astronaut", "chelsea"])
def test_matches_reference_on_photographs(photo):
    # uint8 pixel values: every gradient is a small integer, exact in float32 in both
    # implementations, so the bins must be identical and the values equal up to summation order.
    image = as_video(photo[None])
    ours = HogTarget()(image)
    assert ours.shape == (1, 1, photo.shape[0] // 16, photo.shape[1] // 16, 108)
    torch.testing.assert_close(ours, hog_reference(image), rtol=0, atol=1e-6)
    assert (ours.abs().sum(-1) > 0).float().mean() > 0.9  # a real image: almost no empty token


def test_matches_reference_on_decoded_video(decoded_frames):
    video = as_video(decoded_frames)
    ours = HogTarget()(video)
    assert ours.shape == (1, 8, 6, 8, 108)
    torch.testing.assert_close(ours, hog_reference(video), rtol=0, atol=1e-6)
    # bf16 input (integers up to 256 are exact in bf16) is computed in float32 all the same.
    from_bf16 = HogTarget()(video.bfloat16())
    assert from_bf16.dtype == torch.float32
    torch.testing.assert_close(from_bf16, ours, rtol=0, atol=0)


def test_exact_on_decoded_frames(decoded_frames):
    """The target of real decoded H.264 frames from their uint8 pixels is the formula's own answer: judged against
    the formula evaluated in float64 (exact gradients), at least 99.99% of the values are within 1e-3 (in fact all
    are, to float32 rounding). The same frames normalised to float32 first, as the model input, miss on several
    percent (docs/design.md §2: cancelling gradients leave ±1e-8 and flip bins 0 and 8), so this test tells the two
    apart."""
    video = as_video(decoded_frames)
    exact = hog_reference(video.double())
    within = ((HogTarget()(video).double() - exact).abs() <= 1e-3).double().mean().item()
    assert within >= 0.9999, within
    from_normalised = ((HogTarget()(normalised(video)).double() - exact).abs() <= 1e-3).double().mean().item()
    assert from_normalised < 0.99, from_normalised


def test_pixels_give_the_target_of_the_normalised_input(decoded_frames):
    """PySlowFast computes the target on the normalised clip; mean and std drop out of it in exact arithmetic (the
    Sobel filters sum to zero, every (channel, cell) histogram is L2-normalised), so it equals the target of the
    pixel values. Compared where both sides are exact: a normalisation (p - 128) / 64 is exact in float32 and so are
    its Sobel gradients, which makes the release's convolution on the normalised clip (`hog_reference`, float32)
    agree with `HogTarget` on the uint8 pixels to the last rounding of the square root and the normalisation. (Kinetics'
    (p / 255 - 0.45) / 0.225 is not exact in any float format: see test_exact_on_decoded_frames.)"""
    video = as_video(decoded_frames)
    exactly_normalised = (video.float() - 128) / 64
    torch.testing.assert_close(HogTarget()(video), hog_reference(exactly_normalised), rtol=0, atol=1e-6)


def test_normalised_input_keeps_to_exact_arithmetic(decoded_frames):
    # Float input, e.g. a normalised clip: gradients are no longer exact in float32. Where a pixel's
    # exact gx is 0 (common in quantised images) the rounding sign decides between bins 0 and 8
    # (atan2(±0, gy)), a property of the formula itself. HogTarget takes differences before
    # weighting, which are exact for nearby values. Judged against the float64 evaluation (exact
    # gradients of the float32 input) it deviates on none of this clip's values (the float32
    # convolution of hog_reference: ~5%); the bound leaves room for other rounding.
    video = normalised(as_video(decoded_frames))
    ours = HogTarget()(video)
    exact = hog_reference(video.double()).float()
    deviating = ((ours - exact).abs() > 1e-4).float().mean().item()
    assert deviating < 0.01, deviating


def test_gaussian_window_matches_reference(decoded_frames):
    video = as_video(decoded_frames)
    ours = HogTarget(gaussian_window=16)(video)
    torch.testing.assert_close(ours, hog_reference(video, gaussian_window=16), rtol=0, atol=1e-6)
    assert not torch.allclose(ours, HogTarget()(video), atol=1e-3)  # the window changes the target
    window = gaussian_window_weights(16)
    assert math.isclose(window.sum().item(), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(window, window.T)
    torch.testing.assert_close(window, window.flip(0).flip(1))
    assert window[7:9, 7:9].min() == window.max() and window[0, 0] == window.min()


# ---------------------------------------------------------------------------------------------------
# Against scikit-image


@pytest.mark.parametrize("photo", photographs(), ids=["astronaut", "chelsea"])
def test_matches_skimage_where_the_variants_agree(photo):
    """Differences between skimage.feature.hog and the official variant, and how each is removed:

    1. Gradient: skimage uses central differences I[x+1] - I[x-1] (zero on the first/last row or
       column); we use Sobel, i.e. the same differences smoothed by [1, 2, 1] across. On images
       I(y, x) = f(x) + g(y) each difference is constant across, so Sobel = 4 × central difference
       exactly, and at the borders reflect padding makes the difference 0 just as skimage sets it.
       f and g are a row and a column of a real photograph (per colour channel).
    2. Orientation: skimage bins atan2(g_row, g_col) mod 180°; we bin atan2(gx, gy), x and y
       swapped (and negated: Sobel here is left minus right, which unsigned bins ignore). Feeding
       skimage the transposed image swaps its rows and columns back. Both bins are [20k, 20k + 20)°.
    3. Channels: skimage takes the strongest channel per pixel; we keep colours apart, so each of
       our channels is compared with skimage on that channel alone.
    4. Normalisation: cells_per_block=(1, 1) with block_norm='L2' is L2 over each cell's 9 bins
       (skimage adds eps² = 1e-10 under the root, negligible at these magnitudes). skimage averages
       magnitudes over the cell where we sum; the factor cancels in the L2 normalisation.
    """
    height, width = photo.shape[:2]
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, height, 3), rng.integers(0, width, 3)
    channels = [
        photo[r, :, c].astype(np.float64)[None, :] + photo[:, k, c].astype(np.float64)[:, None]
        for c, (r, k) in enumerate(zip(rows, cols))
    ]  # f_c(x) + g_c(y), values 0..510
    image = torch.from_numpy(np.stack(channels)).float()[None]  # 1×3×H×W
    ours = HogTarget().cell_histograms(image)[0]  # 3×9×(H/8)×(W/8)
    for channel, plane in enumerate(channels):
        theirs = skimage_hog(
            plane.T,
            orientations=9,
            pixels_per_cell=(8, 8),
            cells_per_block=(1, 1),
            block_norm="L2",
            feature_vector=False,
            channel_axis=None,
        )
        theirs = torch.from_numpy(theirs[:, :, 0, 0, :].transpose(2, 1, 0)).float()  # 9×(H/8)×(W/8)
        torch.testing.assert_close(ours[channel], theirs, rtol=0, atol=1e-5)
    assert (ours > 0).sum(1).float().mean() > 2  # cells hold several orientations: a real test


# ---------------------------------------------------------------------------------------------------
# Hand-built gradients


# Ramp I(y, x) = a·x + b·y: the central difference along x is 2a, Sobel's [1, 2, 1] smoothing makes
# it 8a, and wx (left minus right) negates it: gx = -8a, gy = -8b. Then phase = atan2(gx, gy) and
# bin = floor(phase / π · 9) mod 9:
RAMPS = [
    # (a, b, bin)  atan2(gx, gy)                         · 9/π      floor  mod 9
    (0, 1, 0),  # atan2(0, -8)   = π                   9.0        9      0
    (1, 2, 1),  # atan2(-8, -16) = -(π - atan ½)      -7.67       -8      1
    (1, 1, 2),  # atan2(-8, -8)  = -3π/4              -6.75       -7      2
    (2, 1, 3),  # atan2(-16, -8) = -(π - atan 2)      -5.83       -6      3
    (1, 0, 4),  # atan2(-8, 0)   = -π/2               -4.5        -5      4
    (2, -1, 5),  # atan2(-16, 8)  = -atan 2            -3.17       -4      5
    (1, -1, 6),  # atan2(-8, 8)   = -π/4               -2.25       -3      6
    (1, -2, 7),  # atan2(-8, 16)  = -atan ½            -1.33       -2      7
    (1, -5, 8),  # atan2(-8, 40)  = -atan ⅕            -0.57       -1      8
    (-1, -2, 1),  # atan2(8, 16)   = atan ½              1.33        1      1  (opposite of (1, 2))
    (-1, 0, 4),  # atan2(8, 0)    = π/2                 4.5         4      4  (opposite of (1, 0))
]


@pytest.mark.parametrize("a, b, expected_bin", RAMPS)
def test_ramps_land_in_the_derived_bin(a, b, expected_bin):
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    ramp = a * x + b * y
    image = torch.stack([ramp, 2 * ramp, ramp + 100])[None]  # contrast and offset do not matter
    cells = HogTarget().cell_histograms(image)[0]
    interior = cells[:, :, 1:-1, 1:-1]  # border cells see the reflected edge
    expected = torch.zeros(9)
    expected[expected_bin] = 1.0
    torch.testing.assert_close(interior.permute(0, 2, 3, 1), expected.expand(3, 6, 6, 9), rtol=0, atol=1e-6)


@pytest.mark.parametrize("axis, expected_bin", [(1, 4), (0, 0)], ids=["vertical-edge", "horizontal-edge"])
def test_step_edges(axis, expected_bin):
    # A step along x (vertical edge) has gy = 0 → atan2(gx, 0) = ±π/2 → ±4.5 → bin 4 either way;
    # a step along y (horizontal edge) has gx = 0 → atan2(0, gy) = 0 or π → bin 0.
    image = torch.zeros(1, 3, 64, 64)
    index = [slice(None)] * 4
    index[2 + axis] = slice(29, None)  # step between pixels 28 and 29: inside cell 3
    image[tuple(index)] = 50.0
    cells = HogTarget().cell_histograms(image)[0]  # 3×9×8×8
    along = cells.movedim(2 + axis, 1)  # the cell axis across the edge first
    edge_cells, flat_cells = along[:, 3], torch.cat([along[:, :3], along[:, 4:]], 1)
    expected = torch.zeros(9)
    expected[expected_bin] = 1.0
    torch.testing.assert_close(edge_cells.movedim(1, -1), expected.expand(3, 8, 9), rtol=0, atol=1e-6)
    assert flat_cells.abs().max() == 0  # no gradient: all-zero cells, no NaN


# ---------------------------------------------------------------------------------------------------
# Layout, frames, shapes


def test_token_layout_and_frame_selection(decoded_frames):
    video = normalised(as_video(decoded_frames[:4])).repeat(2, 1, 1, 1, 1)
    video[1] = video[1].flip(-1)  # two different clips
    hog = HogTarget()
    tokens = hog(video)  # 2×2×6×8×108
    for t, frame in enumerate((0, 2)):  # temporal stride 2: frames 0 and 2
        cells = hog.cell_histograms(video[:, :, frame])  # 2×3×9×12×16
        for b, ty, tx, c, k, dy, dx in [
            (0, 0, 0, 0, 0, 0, 0),
            (1, 5, 7, 2, 8, 1, 1),
            (0, 3, 2, 1, 4, 0, 1),
            (1, 1, 6, 0, 7, 1, 0),
        ]:
            assert tokens[b, t, ty, tx, (c * 9 + k) * 4 + dy * 2 + dx] == cells[b, c, k, 2 * ty + dy, 2 * tx + dx]
        expected = cells.reshape(2, 27, 6, 2, 8, 2).permute(0, 2, 4, 1, 3, 5).reshape(2, 6, 8, 108)
        torch.testing.assert_close(tokens[:, t], expected, rtol=0, atol=0)


def test_shapes_for_clips_and_images():
    hog = HogTarget()
    assert hog(torch.randn(1, 3, 16, 224, 224)).shape == (1, 8, 14, 14, 108)
    assert hog(torch.randn(2, 3, 1, 224, 224)).shape == (2, 1, 14, 14, 108)  # images: T = 1
    assert hog(torch.randn(1, 3, 2, 64, 96)).shape == (1, 1, 4, 6, 108)  # non-square


def test_no_gradient_flows_and_output_is_float32():
    video = torch.randn(1, 3, 2, 32, 32, requires_grad=True)
    out = HogTarget()(video)
    assert not out.requires_grad and out.dtype == torch.float32


@pytest.mark.parametrize(
    "shape, fault", [((1, 3, 3, 32, 32), "T=3"), ((1, 3, 2, 40, 32), "40×32"), ((3, 2, 32, 32), "B×C×T×H×W")]
)
def test_bad_input_is_named(shape, fault):
    with pytest.raises(ValueError, match=fault):
        HogTarget()(torch.zeros(shape))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="token_size=12"):
        HogTarget(token_size=12)
    with pytest.raises(ValueError, match="multiple of 32"):
        HogTarget(gaussian_window=32)(torch.zeros(1, 3, 2, 32, 48))


# ---------------------------------------------------------------------------------------------------
# Memory


def test_never_holds_a_full_resolution_bin_tensor():
    video = natural_video(1, 8, 224)
    full_resolution_bins = 4 * 3 * 9 * 224 * 224 * 4  # 4 target frames × 3 colours × 9 bins, fp32
    device = torch.device("cpu")
    ours = peak_memory_bytes(lambda: HogTarget()(video), device)
    reference = peak_memory_bytes(lambda: hog_reference(video), device)
    assert reference >= full_resolution_bins  # the measurement sees such a tensor
    assert ours < full_resolution_bins / 2, (ours, full_resolution_bins)


def test_benchmark_reports_both_side_by_side():
    result = benchmark_hog(batch=1, frames=4, size=64, repeats=1)
    assert result["video_shape"] == [1, 3, 4, 64, 64]
    assert result["hog_ms"] > 0 and result["reference_ms"] > 0
    assert result["memory_ratio"] < 0.5 and result["full_resolution_bins_mib"] == 2 * 3 * 9 * 64 * 64 * 4 / 2**20
    assert result["inexact_from_pixels"] <= 1e-4 < 0.01 < result["inexact_from_normalised"]
    table = format_hog_benchmark(result)
    assert "`HogTarget`" in table and "`hog_reference`" in table and f"{result['time_ratio']:.3f}" in table
    assert f"{100 * result['inexact_from_normalised']:.2f}%" in table
