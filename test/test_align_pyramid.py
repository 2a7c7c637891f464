"""fide.align.pyramid: tiled pyramidal OME-TIFFs read back with tifffile: every level's shape and pixel size, the
levels equal the downsampled full resolution, OME channel name and colour, labels halved without mixing values."""

import numpy as np
import pytest
import tifffile
import torch

from fide.align.pyramid import halve, level_shapes, write_pyramid, write_warped
from fide.align.resample import PixelMap
from fide.io.microscopy import inspect_image


def _image(rows, cols, channels, dtype=np.uint8, seed=0):
    noise = np.random.default_rng(seed).random((rows // 32 + 2, cols // 32 + 2, channels))
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(noise).permute(2, 0, 1)[None], size=(rows, cols), mode="bilinear", align_corners=True
    )[0].permute(1, 2, 0)
    return (smooth.numpy() * 200 + 20).astype(dtype)


def _bands(image, rows):
    return (image[y : y + rows] for y in range(0, image.shape[0], rows))


def _levels(path):
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        pixel_sizes = []
        for level in series.levels:
            tags = level.keyframe.tags
            pixel_sizes.append(tuple(1e4 * v[1] / v[0] for v in (tags["XResolution"].value, tags["YResolution"].value)))
        return [level.asarray() for level in series.levels], pixel_sizes, tif.ome_metadata, tif.pages[0]


def test_level_shapes_halve_down_to_the_minimum_side():
    assert level_shapes((1500, 900)) == [(1500, 900), (750, 450)]
    assert level_shapes((1024, 10)) == [(1024, 10)]
    assert level_shapes((20000, 15000)) == [
        (20000, 15000),
        (10000, 7500),
        (5000, 3750),
        (2500, 1875),
        (1250, 938),
        (625, 469),
    ]
    assert level_shapes((1500, 1300), min_side=200)[-1] == (188, 163)


def test_default_pyramid_of_a_1500_px_rgb_image(tmp_path):
    """Defaults (512 px tiles, levels down to 1024 px, zlib): two levels, pixel size doubling, level 1 the 2 x 2
    block mean of level 0, OME pixel size and channel name; no spool file left behind."""
    image = _image(1300, 1500, 3)
    path = write_pyramid(
        tmp_path / "w.ome.tif",
        (1500, 1300),
        3,
        np.uint8,
        _bands(image, 512),
        pixel_size_um=(0.5, 0.5),
        channel_name="bright field",
    )
    levels, sizes, ome, page = _levels(path)
    assert [lv.shape for lv in levels] == [(1300, 1500, 3), (650, 750, 3)]
    assert sizes == [pytest.approx((0.5, 0.5)), pytest.approx((1.0, 1.0))]
    assert np.array_equal(levels[0], image)
    block = image.astype(np.float32).reshape(650, 2, 750, 2, 3).mean((1, 3))
    assert np.abs(levels[1] - block).max() <= 0.5 + 1e-6  # rounded mean
    assert page.tilewidth == 512 and page.tilelength == 512 and page.compression == 8  # zlib (ADOBE_DEFLATE)
    assert 'PhysicalSizeX="0.5"' in ome and 'PhysicalSizeXUnit="µm"' in ome and 'Name="bright field"' in ome
    assert inspect_image(path).pixel_size_um == pytest.approx((0.5, 0.5))
    assert inspect_image(path).levels == ((1500, 1300), (750, 650))
    assert [p.name for p in tmp_path.iterdir()] == ["w.ome.tif"]


def test_small_tiles_give_four_levels_of_grey_uint16_with_odd_sizes(tmp_path):
    image = _image(1001, 1499, 1, np.uint16)
    path = write_pyramid(
        tmp_path / "g.ome.tif",
        (1499, 1001),
        1,
        np.uint16,
        _bands(image, 64),
        tile=64,
        min_side=200,
        compression="none",
        pixel_size_um=(0.25, 0.4),
        channel_name="SHG",
        colour=-1,
    )
    levels, sizes, ome, page = _levels(path)
    assert [lv.shape for lv in levels] == [(1001, 1499), (501, 750), (251, 375), (126, 188)]
    for k, size in enumerate(sizes):
        assert size == pytest.approx((0.25 * 2**k, 0.4 * 2**k))
    expected = image[:, :, 0].astype(np.float64)
    for level in levels[1:]:  # each level: the 2 x 2 mean of the one before (odd edges repeated), rounded
        padded = np.pad(expected, ((0, expected.shape[0] % 2), (0, expected.shape[1] % 2)), mode="edge")
        expected = np.rint(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean((1, 3)))
        assert level.dtype == np.uint16 and np.abs(level - expected).max() <= 1
    assert page.compression == 1 and 'Color="-1"' in ome and 'Name="SHG"' in ome


def test_jpeg_for_bright_field_and_labels_keep_their_values(tmp_path):
    image = _image(300, 400, 3)
    path = write_pyramid(
        tmp_path / "j.ome.tif", (400, 300), 3, np.uint8, _bands(image, 256), tile=256, min_side=128, compression="jpeg"
    )
    levels, _, _, page = _levels(path)
    assert page.compression == 7 and [lv.shape for lv in levels] == [(300, 400, 3), (150, 200, 3), (75, 100, 3)]
    assert np.abs(levels[0].astype(int) - image).mean() < 3  # lossy, but close on a smooth picture
    labels = np.random.default_rng(1).integers(0, 70000, (300, 400, 1)).astype(np.int32)
    path = write_pyramid(
        tmp_path / "l.ome.tif", (400, 300), 1, np.int32, _bands(labels, 64), tile=64, min_side=128, labels=True
    )
    levels, _, _, _ = _levels(path)
    assert np.array_equal(levels[0], labels[..., 0]) and np.array_equal(levels[1], labels[::2, ::2, 0])
    assert np.array_equal(halve(labels, labels=True), labels[::2, ::2])
    with pytest.raises(ValueError, match="lossy"):
        write_warped(
            tmp_path / "x.ome.tif",
            labels.transpose(1, 0, 2),
            PixelMap(torch.eye(3, dtype=torch.float64)),
            (400, 300),
            labels=True,
            compression="jpeg",
        )


def test_the_writer_takes_one_band_at_a_time(tmp_path):
    """Bands are pulled lazily: when band k is asked for, at most k bands came before (nothing is collected)."""
    image = _image(1200, 1100, 1)
    pulled = []

    def bands():
        for y in range(0, 1200, 512):
            pulled.append(y)
            yield image[y : y + 512]

    write_pyramid(tmp_path / "b.ome.tif", (1100, 1200), 1, np.uint8, bands(), pixel_size_um=None)
    assert pulled == [0, 512, 1024]
    assert np.array_equal(tifffile.imread(tmp_path / "b.ome.tif"), image[:, :, 0])
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramid(tmp_path / "c.ome.tif", (1100, 1200), 1, np.uint8, bands(), tile=100)
