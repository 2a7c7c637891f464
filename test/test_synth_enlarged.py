"""fide.synth.enlarged: a picture enlarged band by band into a pyramidal OME-TIFF; its landmarks moved alike (pixel
centres at integers, edges on edges: ``(x + 0.5) * factor - 0.5``)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from fide.geometry import resize_matrix
from fide.io.microscopy import inspect_image
from fide.synth.enlarged import enlarged_points, enlarged_side, write_enlarged

_FACTOR = 20000 / 4096  # fide example-pair's factor at 20 000 px: not a whole number


def _read(path):
    """Every level (rows, columns[, C]) of a pyramidal OME-TIFF, its (x, y) µm pixel sizes, OME XML, first page."""
    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        tags = [level.keyframe.tags for level in tif.series[0].levels]
        sizes = [tuple(1e4 * t[k].value[1] / t[k].value[0] for k in ("XResolution", "YResolution")) for t in tags]
        return levels, sizes, tif.ome_metadata, tif.pages[0]


def _dots(rows: int, cols: int, centres: np.ndarray, sigma: float = 1.2) -> np.ndarray:
    """(rows, cols) uint8 dark picture with a bright Gaussian dot at each (x, y) of ``centres`` (K, 2)."""
    y, x = np.mgrid[0:rows, 0:cols]
    image = sum(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres)
    return np.rint(250 * image).astype(np.uint8)


def _centroid(image: np.ndarray, around: np.ndarray, radius: float) -> np.ndarray:
    """Intensity-weighted (x, y) centroid of ``image`` within ``radius`` px of ``around``."""
    y, x = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    near = (x - around[0]) ** 2 + (y - around[1]) ** 2 <= radius**2
    weights = image.astype(np.float64) * near
    return np.array([(weights * x).sum(), (weights * y).sum()]) / weights.sum()


def test_points_move_as_pixel_areas_do():
    """Edges land on edges: picture x = -0.5 and n - 0.5 go to -0.5 and n * factor - 0.5 (fide.geometry's "area"
    centres); the output side is the whole pixels of n * factor."""
    points = np.array([[-0.5, -0.5], [0.0, 3.25], [99.5, 99.5]])
    np.testing.assert_allclose(enlarged_points(points, 4.0)[[0, 2]], [[-0.5, -0.5], [399.5, 399.5]])
    area = resize_matrix((100, 100), (400, 400), centres="area").numpy()
    np.testing.assert_allclose(enlarged_points(points, 4.0), points @ area[:2, :2].T + area[:2, 2])
    assert enlarged_side(4096, _FACTOR) == 20000 and enlarged_side(2048, _FACTOR) == 10000
    assert enlarged_side(2048, 20001 / 4096) == 10000  # an odd SHG side: the bright field keeps whole pixels


@pytest.mark.parametrize("factor", [3.0, _FACTOR])
def test_a_landmark_on_a_bright_dot_stays_on_it(tmp_path, factor):
    """Dots at sub-pixel positions of the picture: the enlarged dots' centroids are where enlarged_points puts
    them (well under a picture pixel; a tenth of an enlarged pixel)."""
    centres = np.array([[10.3, 12.7], [31.0, 8.5], [22.6, 27.2]])
    picture = _dots(40, 44, centres)
    path = write_enlarged(tmp_path / "dots.ome.tif", picture, factor, 0.5, tile=32)
    enlarged = _read(path)[0][0]
    for expected in enlarged_points(centres, factor):
        found = _centroid(enlarged, expected, radius=4 * 1.2 * factor)
        np.testing.assert_allclose(found, expected, atol=0.1)


def test_bands_are_invisible_and_the_values_are_bilinear(tmp_path):
    """16- and 64-row bands give the same file pixels, and they equal torch's bilinear (align_corners=False)
    enlargement of the whole picture at once, rounded."""
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (45, 52, 3), dtype=np.uint8)
    small = _read(write_enlarged(tmp_path / "a.ome.tif", picture, _FACTOR, 1.0, tile=16))[0][0]
    large = _read(write_enlarged(tmp_path / "b.ome.tif", picture, _FACTOR, 1.0, tile=64))[0][0]
    np.testing.assert_array_equal(small, large)
    whole = F.interpolate(
        torch.from_numpy(picture).permute(2, 0, 1)[None].float(),
        scale_factor=_FACTOR,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )[0].permute(1, 2, 0)
    assert small.shape == tuple(whole.shape) == (enlarged_side(45, _FACTOR), enlarged_side(52, _FACTOR), 3)
    assert np.abs(small - whole.numpy()).max() <= 0.5 + 1e-3


def test_the_file_is_a_tiled_pyramid_with_the_pixel_size(tmp_path):
    """Grey and RGB: tiles of the given side, zlib, levels halving down to min_side, the OME pixel size at full
    resolution and each level's own in its resolution tags; fide reads the levels back."""
    rng = np.random.default_rng(1)
    for name, picture, um, shapes in (
        ("grey", rng.integers(0, 256, (60, 50), dtype=np.uint8), 0.5, [(300, 250), (150, 125), (75, 63)]),
        ("rgb", rng.integers(0, 256, (30, 25, 3), dtype=np.uint8), 1.0, [(150, 125), (75, 63)]),
    ):
        path = write_enlarged(tmp_path / f"{name}.ome.tif", picture, 5.0, um, tile=64, min_side=100)
        levels, sizes, ome, page = _read(path)
        assert [level.shape[:2] for level in levels] == shapes, name
        assert all(level.shape[2:] == picture.shape[2:] for level in levels)
        assert sizes == [pytest.approx((um * 2**k, um * 2**k)) for k in range(len(levels))]
        assert page.tilewidth == 64 and page.tilelength == 64 and page.compression == 8  # zlib
        assert f'PhysicalSizeX="{um}"' in ome
        assert inspect_image(path).pixel_size_um == pytest.approx((um, um))


def test_a_float_or_flat_picture_is_refused(tmp_path):
    with pytest.raises(ValueError, match="integer pixels"):
        write_enlarged(tmp_path / "f.ome.tif", np.zeros((8, 8), np.float32), 2.0, 1.0)
    with pytest.raises(ValueError, match="factor must be positive"):
        write_enlarged(tmp_path / "z.ome.tif", np.zeros((8, 8), np.uint8), 0.0, 1.0)
