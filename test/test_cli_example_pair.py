"""``fide example-pair``: today's pair up to ENLARGE_ABOVE_PX, a rendered-then-enlarged pyramidal pair above it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import tifffile

from fide.cli.main import main
from fide.synth import make_pair
from fide.synth.enlarged import enlarged_points

_COLUMNS = ["fixed_x", "fixed_y", "moving_x", "moving_y"]


def _render(size: int, length_scale: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pair fide example-pair wrote before enlargement existed: SHG (rows, cols), bright field 2 x 2 block
    means (rows / 2, cols / 2, 3) and the landmarks (N, 4) in each image's pixels."""
    pair = make_pair("val", 0, size, 0, length_scale=length_scale)
    moving = np.transpose(pair["moving"], (2, 1, 0)).astype(np.float32)
    half = size // 2
    moving = moving[: 2 * half, : 2 * half].reshape(half, 2, half, 2, 3).mean((1, 3))
    points = np.hstack([pair["fixed_points"], (pair["moving_points"] + 0.5) / 2 - 0.5])
    return pair["fixed"][0].T, np.clip(np.rint(moving), 0, 255).astype(np.uint8), points


def _levels(path) -> tuple[list[tuple[int, ...]], tuple[int, int] | None]:
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return [level.shape for level in tif.series[0].levels], (
            page.tilelength,
            page.tilewidth,
        ) if page.is_tiled else None


def test_512_px_is_the_pair_of_before(tmp_path):
    """At and below the threshold nothing changed: the same pixels, plain (untiled) OME-TIFFs, the same landmarks."""
    assert main(["example-pair", str(tmp_path), "--size", "512"]) == 0
    fixed, moving, points = _render(512)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "shg.ome.tif"), fixed)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "bright field.ome.tif"), moving)
    written = pd.read_csv(tmp_path / "landmarks.csv")
    assert list(written.columns) == _COLUMNS
    np.testing.assert_array_equal(written.to_numpy(), pd.DataFrame(points).round(3).to_numpy())
    assert _levels(tmp_path / "shg.ome.tif") == ([(512, 512)], None)


def test_above_the_render_side_the_render_is_enlarged_into_pyramids(tmp_path):
    """--render 128, --size 2100: the 128 px pair enlarged x16.4 (tiled pyramids down to <= 1024 px, 0.5 / 1 µm),
    the landmarks moved alike: mapped back they are the 128 px pair's."""
    assert main(["example-pair", str(tmp_path), "--size", "2100", "--render", "128"]) == 0
    shg, bright = tmp_path / "shg.ome.tif", tmp_path / "bright field.ome.tif"
    assert _levels(shg) == ([(2100, 2100), (1050, 1050), (525, 525)], (512, 512))
    assert _levels(bright) == ([(1050, 1050, 3), (525, 525, 3)], (512, 512))
    fixed, moving = sitk.ReadImage(str(shg)), sitk.ReadImage(str(bright))
    assert fixed.GetSpacing() == pytest.approx((0.5e-3, 0.5e-3)) and moving.GetSpacing() == pytest.approx((1e-3, 1e-3))
    factor = 2100 / 128
    _, _, points = _render(128)
    written = pd.read_csv(tmp_path / "landmarks.csv")
    assert list(written.columns) == _COLUMNS
    expected = np.hstack([enlarged_points(points[:, :2], factor), enlarged_points(points[:, 2:], factor)])
    np.testing.assert_allclose(written.to_numpy(), expected, atol=5e-4)  # the CSV's 3 decimals


def test_a_render_side_under_64_px_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="--render must be at least 64, got 32"):
        main(["example-pair", str(tmp_path), "--size", "512", "--render", "32"])
    assert not (tmp_path / "shg.ome.tif").exists()


def test_length_scale_draws_finer_structures_at_the_same_size(tmp_path):
    """--length-scale 1 at 256 px: the pixels of ``make_pair(..., length_scale=1)``, not the default's
    (256 / 834 = 0.31)."""
    assert main(["example-pair", str(tmp_path), "--size", "256", "--length-scale", "1"]) == 0
    written = tifffile.imread(tmp_path / "shg.ome.tif")
    np.testing.assert_array_equal(written, _render(256, length_scale=1.0)[0])
    assert not np.array_equal(written, _render(256)[0])


def test_length_scale_above_the_render_side_is_the_final_images(tmp_path):
    """--size 512 --render 128 --length-scale 8: the render draws the structures at 8 x 128 / 512 = 2, so the
    landmarks mapped back are those of the 128 px pair drawn at length scale 2."""
    assert main(["example-pair", str(tmp_path), "--size", "512", "--render", "128", "--length-scale", "8"]) == 0
    _, _, points = _render(128, length_scale=2.0)
    expected = np.hstack([enlarged_points(points[:, :2], 4.0), enlarged_points(points[:, 2:], 4.0)])
    np.testing.assert_allclose(pd.read_csv(tmp_path / "landmarks.csv").to_numpy(), expected, atol=5e-4)  # 3 decimals


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_length_scale_not_positive_is_refused(tmp_path, value):
    with pytest.raises(SystemExit, match=f"--length-scale must be positive, got {value}"):
        main(["example-pair", str(tmp_path), "--size", "256", "--length-scale", value])
    assert not (tmp_path / "shg.ome.tif").exists()
