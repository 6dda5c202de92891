"""The HOG picture (mfvideo.evaluation.hog_picture): glyph geometry, the token → cell unpacking of docs/design.md
§2, and the picture of a MaskFeat model on a real demo-shard batch."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from launch_helpers import REPO
from mfvideo.app.hog_picture import recipe_hog_picture
from mfvideo.config import load_recipe
from mfvideo.evaluation.hog_picture import draw_hog_picture, glyph_image, hog_panels, orientation_glyphs, unpack_tokens
from mfvideo.targets.hog import HogTarget
from mfvideo.tasks import build_model, train_loader
from stream_helpers import demo_shards

BINS = 9


def line_angle(points: np.ndarray) -> float:
    """Unsigned angle in degrees [0, 180) of the principal axis of (row, col) points, measured from the downward
    row axis towards the rightward column axis."""
    centred = points - points.mean(axis=0)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    d_row, d_col = vectors[:, -1]
    return math.degrees(math.atan2(d_col, d_row)) % 180


def angle_gap(a: float, b: float) -> float:
    gap = abs(a - b) % 180
    return min(gap, 180 - gap)


def test_bin_of_vertical_edges_draws_the_centre_column():
    glyph = orientation_glyphs(BINS, 32)[4]  # bin 4: gradients at 80°..100°, i.e. horizontal gradients
    assert {tuple(p) for p in np.argwhere(glyph)} == {(row, 16) for row in range(1, 32)}


@pytest.mark.parametrize("k", range(BINS))
def test_single_bin_draws_one_line_along_the_edge_of_its_mid_angle(k):
    glyph = orientation_glyphs(BINS, 32)[k]
    lit = np.argwhere(glyph)
    theta = math.radians((k + 0.5) * 180 / BINS)
    edge = math.degrees(math.atan2(math.cos(theta), -math.sin(theta))) % 180  # (−sin θ, cos θ) in (row, col)
    assert angle_gap(line_angle(lit), edge) < 2.0
    # one straight line through the cell centre, 15 pixels to either side of it
    normal = np.array([math.cos(theta), math.sin(theta)])
    along = (lit - 16) @ np.array([-math.sin(theta), math.cos(theta)])
    assert np.abs((lit - 16) @ normal).max() <= 1.0
    assert along.min() == pytest.approx(-15, abs=0.75) and along.max() == pytest.approx(15, abs=0.75)
    assert set(np.unique(glyph)) == {0.0, 1.0}


def test_glyph_image_places_each_cell_and_weighs_each_bin():
    cells = np.zeros((2, 3, BINS), dtype=np.float32)
    cells[1, 2, 4] = 0.75
    cells[0, 0, 0] = 0.5
    image = glyph_image(cells, 16)
    assert image.shape == (32, 48)
    glyphs = orientation_glyphs(BINS, 16)
    np.testing.assert_array_equal(image[16:, 32:], 0.75 * glyphs[4])
    np.testing.assert_array_equal(image[:16, :16], 0.5 * glyphs[0])
    assert not image[:16, 16:].any() and not image[16:, :32].any()


@pytest.mark.parametrize("edge_degrees", [0, 25, 45, 80, 115, 160])
def test_edge_in_an_image_draws_a_line_along_that_edge(edge_degrees):
    """A blurred straight edge through a 32×32 image, its HOG computed by the model's own HogTarget: the middle cells'
    glyphs are brightest along the edge, within half a bin (angles from the downward axis towards the right, as
    line_angle; the edges lie inside bins: one on a bin boundary falls in either)."""
    direction = math.radians(edge_degrees)
    normal = (-math.sin(direction), math.cos(direction))  # (row, col), perpendicular to the edge
    rows, cols = np.mgrid[0:32, 0:32] - 15.5
    image = 255 / (1 + np.exp(-(rows * normal[0] + cols * normal[1]) / 1.5))
    frame = torch.from_numpy(np.stack([image, 0.5 * image, 0.2 * image])).float()[None]
    cells = HogTarget().cell_histograms(frame)[0].sum(dim=0).permute(1, 2, 0).numpy()  # 4×4×bins
    glyphs = glyph_image(cells, 32)
    centre = glyphs[32:96, 32:96]  # the 2×2 cells the edge runs through
    for block in (centre[:32, :32], centre[32:, 32:], centre[:32, 32:], centre[32:, :32]):
        if block.max() > 0:
            bright = np.argwhere(block >= 0.6 * block.max())
            assert angle_gap(line_angle(bright), edge_degrees) <= 11.0, (edge_degrees, line_angle(bright))


def test_unpacking_follows_the_official_token_order():
    """Features of a 2×3 token grid written by hand in docs/design.md §2's order (colour·9 + bin)·4 + dy·2 + dx, each
    value naming its cell row, column, colour and bin."""
    features = torch.zeros(2, 3, 108)
    for ty in range(2):
        for tx in range(3):
            for colour in range(3):
                for k in range(BINS):
                    for dy in range(2):
                        for dx in range(2):
                            row, col = 2 * ty + dy, 2 * tx + dx
                            features[ty, tx, (colour * 9 + k) * 4 + dy * 2 + dx] = (
                                1000 * colour + 100 * k + 10 * row + col
                            )
    cells = unpack_tokens(features, BINS, 2)
    assert cells.shape == (4, 6, 3, BINS)
    for row in range(4):
        for col in range(6):
            for colour in range(3):
                for k in range(BINS):
                    assert cells[row, col, colour, k] == 1000 * colour + 100 * k + 10 * row + col


def test_unpacking_inverts_the_targets_token_packing(tmp_path):
    """On a real frame: the model's per-token target, unpacked, is the per-cell histogram of the same frame."""
    from skimage import data as skimage_data

    frame = torch.from_numpy(skimage_data.astronaut()[100:164, 150:246].copy()).permute(2, 0, 1).float()
    hog = HogTarget()
    tokens = hog(frame[None, :, None])[0, 0]  # 4×6×108
    expected = hog.cell_histograms(frame[None])[0].permute(2, 3, 0, 1)  # 8×12×3×9
    torch.testing.assert_close(unpack_tokens(tokens, BINS, 2), expected, rtol=0, atol=0)


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """The demo pretraining recipe on the test demo shards (4 frames at 64², a 2×2×2 mask grid), with the weights
    of a freshly initialised tiny MaskFeat as model.init."""
    weights = tmp_path_factory.mktemp("hog_picture") / "model.pt"
    recipe = load_recipe(
        REPO / "recipes" / "demo_pt.yaml",
        [
            f"data.train={demo_shards()}",
            "data.num_frames=4",
            "data.crop_size=64",
            "data.num_workers=1",
            f"model.init={weights}",
        ],
    )
    torch.manual_seed(0)
    torch.save(build_model(replace(recipe.model, init=""), 4, 64).state_dict(), weights)
    return recipe


def test_panels_show_hog_only_on_masked_tokens_of_a_real_batch(tiny_recipe):
    """A loader batch whose masks (2×2×2 units of 2×2 tokens) are set by hand: clip 1 masks two units of time step 1
    only, clip 0 nothing."""
    model = build_model(tiny_recipe.model, 4, 64, strict_init=True).eval()
    batch = next(iter(train_loader(tiny_recipe, 2, 0, 1)))
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["mask"][1, 1, 0, 1] = batch["mask"][1, 1, 1, 0] = True
    panels = hog_panels(model, batch, tiny_recipe.data.mean, tiny_recipe.data.std, clip=1)
    assert [p.step for p in panels] == [1]
    panel = panels[0]
    token_mask = np.kron([[0, 1], [1, 0]], np.ones((2, 2))).astype(bool)
    np.testing.assert_array_equal(panel.masked, token_mask)
    glyph_mask = np.kron(token_mask, np.ones((32, 32))).astype(bool)  # 2 cells of 16 glyph pixels per token
    for image in (panel.target, panel.predicted):
        assert image.shape == (128, 128)
        assert np.isnan(image[~glyph_mask]).all() and np.isfinite(image[glyph_mask]).all()
        assert (image[glyph_mask] >= 0).all()
    assert panel.target[glyph_mask].max() > 0 and panel.masked_mse > 0
    pixels = batch["video"][1, :, 2].permute(1, 2, 0) * 0.225 + 0.45  # time token 1 starts at frame 2
    np.testing.assert_allclose(panel.frame, pixels.clamp(0, 1).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="has no masked token"):
        hog_panels(model, batch, tiny_recipe.data.mean, tiny_recipe.data.std, clip=0)


def test_recipe_picture_is_written_as_png(tiny_recipe, tmp_path):
    out = recipe_hog_picture(tiny_recipe, tmp_path / "pics" / "hog.png", max_steps=2)
    with Image.open(out) as png:
        assert png.format == "PNG"
        width, height = png.size
        picture = np.asarray(png.convert("L"))
    assert width == 750 and height in (540, 290)  # 3 columns; 2 or 1 rows (steps with a mask)
    assert picture.std() > 10  # not a blank canvas


def test_picture_refuses_what_it_cannot_draw(tiny_recipe, tmp_path):
    with pytest.raises(ValueError, match="model.init is not set"):
        recipe_hog_picture(replace(tiny_recipe, model=replace(tiny_recipe.model, init="")), tmp_path / "x.png")
    with pytest.raises(ValueError, match="model.task='classify'"):
        recipe_hog_picture(replace(tiny_recipe, model=replace(tiny_recipe.model, task="classify")), tmp_path / "x.png")
    with pytest.raises(ValueError, match="no panels"):
        draw_hog_picture([], tmp_path / "x.png")
