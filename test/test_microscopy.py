"""fide.io.microscopy: every input format and bit depth reads in fide's (X, Y, C) order with its pixel size."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from fide.io import DatasetError
from fide.io.microscopy import (
    WindowReader,
    format_family,
    inspect_image,
    read_level,
    write_ome_pyramid,
    write_warped_sitk,
)

RNG = np.random.default_rng(0)


def _picture(dtype, channels, rows=12, cols=9):
    """A (rows, cols[, C]) picture whose pixel (row r, column c) is unique: value = 10 r + c (+ 100 k)."""
    base = (10 * np.arange(rows)[:, None] + np.arange(cols)[None, :]).astype(np.float64)
    if channels == 1:
        return base.astype(dtype)
    return np.stack([base + 100 * k for k in range(channels)], -1).astype(dtype)


def _check_order(array_xy, picture):
    """fide order: array[x, y] = picture[row y, column x]."""
    picture = picture if picture.ndim == 3 else picture[:, :, None]
    assert array_xy.shape == (picture.shape[1], picture.shape[0], picture.shape[2])
    assert np.array_equal(array_xy, np.transpose(picture, (1, 0, 2)))


@pytest.mark.parametrize(
    "dtype,channels", [(np.uint8, 1), (np.uint16, 1), (np.float32, 1), (np.uint8, 3), (np.uint16, 3), (np.uint8, 4)]
)
def test_tiff_every_bit_depth_and_layout_reads_in_fide_order(tmp_path, dtype, channels):
    picture = _picture(dtype, channels)
    path = tmp_path / "an image with spaces.tif"
    extra = {"photometric": "rgb", "extrasamples": ["unassalpha"] * (channels - 3)} if channels >= 3 else {}
    tifffile.imwrite(path, picture, **extra)
    info = inspect_image(path)
    assert info.shape == (9, 12) and info.channels == channels and info.dtype == np.dtype(dtype)
    assert info.frame is not None and info.frame.dimension == 2 and info.family == ".ome.tif"
    _check_order(read_level(info), picture)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".mha", ".nrrd", ".nii.gz"])
def test_other_formats_read_in_fide_order(tmp_path, suffix):
    picture = _picture(np.uint8, 3)
    path = tmp_path / f"img{suffix}"
    if suffix == ".nii.gz":  # nibabel axis 0 is x
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(np.transpose(picture, (1, 0, 2))[:, :, None, :]), np.eye(4)), path
        )
    else:
        sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(path))
    info = inspect_image(path)
    assert info.shape == (9, 12) and info.channels == 3 and info.family == format_family(path)
    array = read_level(info)
    if suffix == ".jpg":  # lossy: the layout, not the values
        assert array.shape == (9, 12, 3) and np.abs(array.astype(int) - np.transpose(picture, (1, 0, 2))).mean() < 12
    else:
        _check_order(array, picture)


def test_pixel_size_from_ome_tiff_resolution_and_mha_spacing(tmp_path):
    picture = _picture(np.uint8, 1)
    tifffile.imwrite(tmp_path / "a.ome.tif", picture, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.25})
    assert inspect_image(tmp_path / "a.ome.tif").pixel_size_um == (0.5, 0.25)
    tifffile.imwrite(
        tmp_path / "nm.ome.tif",
        picture,
        metadata={"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 500, "PhysicalSizeYUnit": "nm"},
    )
    assert inspect_image(tmp_path / "nm.ome.tif").pixel_size_um == pytest.approx((0.5, 0.5))
    tifffile.imwrite(tmp_path / "res.tif", picture, resolution=(1e4 / 0.65, 1e4 / 0.65), resolutionunit="CENTIMETER")
    assert inspect_image(tmp_path / "res.tif").pixel_size_um == pytest.approx((0.65, 0.65))
    tifffile.imwrite(tmp_path / "dpi.tif", picture, resolution=(72, 72), resolutionunit="INCH")
    assert inspect_image(tmp_path / "dpi.tif").pixel_size_um is None  # a screen default, not the specimen
    tifffile.imwrite(tmp_path / "none.tif", picture)
    assert inspect_image(tmp_path / "none.tif").pixel_size_um is None
    image = sitk.GetImageFromArray(picture)
    image.SetSpacing((0.002, 0.004))  # mm
    sitk.WriteImage(image, str(tmp_path / "a.mha"))
    assert inspect_image(tmp_path / "a.mha").pixel_size_um == pytest.approx((2.0, 4.0))


def test_ome_pyramid_levels_are_listed_and_read(tmp_path):
    picture = _picture(np.uint8, 3, rows=32, cols=24)
    with tifffile.TiffWriter(tmp_path / "pyr.ome.tif", bigtiff=True) as tif:
        tif.write(
            picture, subifds=1, photometric="rgb", tile=(16, 16), metadata={"PhysicalSizeX": 1, "PhysicalSizeY": 1}
        )
        tif.write(picture[::2, ::2], subfiletype=1, photometric="rgb", tile=(16, 16))
    info = inspect_image(tmp_path / "pyr.ome.tif")
    assert info.levels == ((24, 32), (12, 16)) and info.pixel_size_um == (1.0, 1.0)
    _check_order(read_level(info, 1), picture[::2, ::2])
    _check_order(read_level(info, 0), picture)


def test_stacks_damaged_and_unknown_files_give_one_line_errors(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(DatasetError, match=r"stack.tif: expected one 2D image"):
        inspect_image(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "two.ome.tif", np.zeros((2, 8, 8), np.uint8), metadata={"axes": "CYX"})
    with pytest.raises(DatasetError, match=r"two.ome.tif: 2 separate channels"):
        inspect_image(tmp_path / "two.ome.tif")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(DatasetError, match=r"bad.tif: cannot read TIFF"):
        inspect_image(tmp_path / "bad.tif")
    (tmp_path / "x.bmpx").write_bytes(b"")
    with pytest.raises(DatasetError, match="unsupported image format"):
        inspect_image(tmp_path / "x.bmpx")
    with pytest.raises(DatasetError, match="not found"):
        inspect_image(tmp_path / "missing.tif")


def test_tiled_ome_tiff_reads_back_with_its_pixel_size(tmp_path):
    """tifffile and fide read it back (SimpleITK's TIFF reader decodes tiled files only as 8-bit RGBA: not used)."""
    picture = _picture(np.uint16, 3, rows=20, cols=7)

    def tiles():  # one level of 16 px tiles, zero-padded at the edges
        for r in range(0, 20, 16):
            tile = np.zeros((16, 16, 3), np.uint16)
            tile[: min(16, 20 - r), :7] = picture[r : r + 16]
            yield tile

    path = write_ome_pyramid(
        tmp_path / "w.ome.tif",
        [(7, 20)],
        3,
        np.dtype(np.uint16),
        iter([tiles()]),
        16,
        pixel_size_um=(0.5, 2.0),
        channel_name="bf",
    )
    assert np.array_equal(tifffile.imread(path), picture)
    with pytest.raises(ValueError, match="compression must be one of"):
        write_ome_pyramid(
            tmp_path / "x.ome.tif", [(7, 20)], 3, np.dtype(np.uint16), iter([tiles()]), 16, compression="lzw"
        )
    with pytest.raises(ValueError, match="'jpeg' needs uint8"):
        write_ome_pyramid(
            tmp_path / "x.ome.tif", [(7, 20)], 3, np.dtype(np.uint16), iter([tiles()]), 16, compression="jpeg"
        )
    assert inspect_image(path).pixel_size_um == pytest.approx((0.5, 2.0))
    assert not list(tmp_path.glob(".*part*"))


def test_write_warped_sitk_keeps_the_frame(tmp_path):
    from fide.geometry import PhysicalFrame

    frame = PhysicalFrame((1.0, 2.0), (0.5, 0.25), (0.0, 1.0, 1.0, 0.0))
    array = np.transpose(_picture(np.float32, 1), (1, 0))[:, :, None]
    path = write_warped_sitk(tmp_path / "w.mha", array, frame)
    image = sitk.ReadImage(str(path))
    assert PhysicalFrame.of_image(image) == frame
    assert np.array_equal(sitk.GetArrayFromImage(image), _picture(np.float32, 1))


def test_tiff_compression_without_a_tifffile_codec_falls_back_to_simpleitk(tmp_path):
    """LZW needs imagecodecs in tifffile; SimpleITK (libtiff) reads it: the pixels come back either way."""
    picture = _picture(np.uint8, 3)
    path = tmp_path / "lzw.tif"
    sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=True), str(path), True, compressor="LZW")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == 5  # LZW
    info = inspect_image(path)
    assert info.shape == (9, 12)
    _check_order(read_level(info)[..., :3], picture)


@pytest.mark.parametrize("layout", [{"rowsperstrip": 7}, {"tile": (16, 32)}, {"rowsperstrip": 7, "compression": None}])
@pytest.mark.parametrize("channels", [1, 3])
def test_window_reader_decodes_only_the_window_and_matches_the_whole_level(tmp_path, layout, channels):
    """Strips or tiles, compressed or not: every window (edges, clipped, across segments) equals the level's slice;
    a PNG is read whole once and cut."""
    picture = RNG.integers(0, 255, (50, 70) + ((3,) if channels == 3 else ()), dtype=np.uint8)
    path = tmp_path / "w.tif"
    options = {"compression": "zlib", **layout}
    tifffile.imwrite(path, picture, photometric="rgb" if channels == 3 else "minisblack", **options)
    info = inspect_image(path)
    whole = read_level(info)
    windows = [(0, 70, 0, 50), (3, 41, 5, 33), (-4, 10, 45, 60), (69, 90, 0, 1), (60, 61, 20, 21)]
    with WindowReader(info) as reader:
        assert reader._page is not None  # segment by segment, not the whole level
        for x0, x1, y0, y1 in windows:
            expected = whole[max(0, x0) : min(70, x1), max(0, y0) : min(50, y1)]
            assert np.array_equal(reader(x0, x1, y0, y1), expected), (x0, x1, y0, y1)
    png = tmp_path / "w.png"
    sitk.WriteImage(sitk.GetImageFromArray(picture, isVector=channels == 3), str(png))
    with WindowReader(inspect_image(png)) as reader:
        assert np.array_equal(reader(3, 41, 5, 33), read_level(inspect_image(png))[3:41, 5:33])
