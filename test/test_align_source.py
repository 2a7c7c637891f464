"""fide.align.source: inputs as files or arrays, pyramid levels and the map to working pixels."""

import numpy as np
import pytest
import tifffile
import torch

from fide import geometry
from fide.align.source import open_source, working_image


def _blob(rows: int, cols: int, x: float, y: float, sigma: float = 6.0) -> np.ndarray:
    """(rows, cols) float picture of a Gaussian centred on column x, row y."""
    yy, xx = np.mgrid[:rows, :cols]
    return np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


def _centroid_xy(pixels: torch.Tensor) -> np.ndarray:
    """Intensity centroid (x, y) of a (1, X, Y) working image, background removed."""
    image = (pixels[0] - pixels[0].min()).double()
    grid = geometry.identity_grid(image.shape, like=image)
    return ((grid * image).sum((1, 2)) / image.sum()).numpy()


@pytest.mark.parametrize("working", [(32, 24), (40, 30)])
def test_pyramid_level_and_working_map_keep_a_feature_in_place(tmp_path, working):
    """A blob at (x, y) = (150, 60) of a 256 x 192 OME pyramid lands at to_working @ (150, 60)."""
    full = (255 * _blob(192, 256, 150.0, 60.0)).astype(np.float32)
    half = full.reshape(96, 2, 128, 2).mean((1, 3))  # a pyramid level: 2 x 2 block means (area convention)
    with tifffile.TiffWriter(tmp_path / "pyr.ome.tif") as tif:
        tif.write(full, subifds=1, tile=(32, 32), metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(half, subfiletype=1, tile=(32, 32))
    source = open_source(tmp_path / "pyr.ome.tif", None, "fixed")
    assert source.shape == (256, 192) and source.pixel_size_um == (0.5, 0.5)
    image = working_image(source, working)
    assert tuple(image.pixels.shape) == (1, *working)
    expected = geometry.apply_affine_to_points(image.to_working, torch.tensor([[150.0, 60.0]], dtype=torch.float64))
    assert np.abs(_centroid_xy(image.pixels) - expected.numpy()[0]).max() < 0.05


def test_arrays_are_rows_and_columns_and_bad_arrays_raise():
    picture = np.zeros((20, 30, 3), np.uint8)  # 20 rows, 30 columns
    picture[5, 25] = 255  # row 5, column 25
    source = open_source(picture, 0.5, "moving")
    assert source.shape == (30, 20) and source.pixel_size_um == (0.5, 0.5)
    assert source.read()[25, 5].tolist() == [255, 255, 255]
    assert source.frame.spacing == (0.5e-3, 0.5e-3)  # the pixel size in mm, as SimpleITK reads OME-TIFFs
    with pytest.raises(ValueError, match="1-4 channels"):
        open_source(np.zeros((4, 4, 5)), None, "fixed")
    with pytest.raises(ValueError, match="finite"):
        open_source(np.full((4, 4), np.nan), None, "fixed")
    with pytest.raises(ValueError, match="positive pixel size"):
        open_source(picture, -1.0, "moving")


def test_bit_depths_are_brought_to_the_8_bit_scale_and_alpha_composited():
    rgb16 = np.full((16, 16, 3), 65535 // 2, np.uint16)
    assert working_image(open_source(rgb16, None, "m"), (16, 16)).pixels.max() == pytest.approx(127.5, abs=0.01)
    grey12 = np.random.default_rng(0).integers(0, 4096, (16, 16)).astype(np.uint16)
    grey = working_image(open_source(grey12, None, "f"), (16, 16)).pixels
    assert float(grey.max()) > 250 and float(np.percentile(grey.numpy(), 99.9)) == pytest.approx(255, abs=1)
    rgb_float = np.full((16, 16, 3), 0.5, np.float32)
    assert working_image(open_source(rgb_float, None, "m"), (16, 16)).pixels.max() == pytest.approx(127.5)
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, :8] = (200, 100, 150, 255)  # left half tissue, right half transparent
    pixels = working_image(open_source(rgba, None, "m"), (16, 16)).pixels
    assert pixels.shape[0] == 3 and torch.equal(pixels[:, 12, 3], torch.full((3,), 255.0))
    assert pixels[:, 2, 3].tolist() == [200.0, 100.0, 150.0]
