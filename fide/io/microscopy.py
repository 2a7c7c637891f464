"""Microscopy image files for ``fide align``: TIFF/OME-TIFF pyramids (tifffile), PNG, JPEG, NIfTI, MHA/NRRD.

Arrays here are in fide's array order: ``(X, Y, C)`` with axis 0 = ITK index 0 (x, the column of a TIFF/PNG; the
nibabel axis i of a NIfTI), axis 1 = ITK index 1, channels last, in the file's own dtype. Pixel sizes are micrometres
per pixel along (x, y). The ITK frame of a file is what ``SimpleITK.ReadImage`` reports for it (header only), the
physical space a ``transform.tfm`` must use. No maths here beyond unit conversion.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile

from fide.geometry import PhysicalFrame

from .dataset import DatasetError
from .fields import atomic_path
from .images import _read_array

__all__ = [
    "ImageInfo",
    "inspect_image",
    "read_level",
    "WindowReader",
    "format_family",
    "write_ome_pyramid",
    "write_warped_sitk",
    "COMPRESSIONS",
    "compression_option",
]

logger = logging.getLogger(__name__)

_TIFF = (".tif", ".tiff", ".btf", ".tf8", ".svs")
_FAMILIES = {".png": ".png", ".jpg": ".jpg", ".jpeg": ".jpg", ".nii": ".nii.gz", ".nii.gz": ".nii.gz"}
_FAMILIES.update({".mha": ".mha", ".mhd": ".mha", ".nrrd": ".nrrd", ".nhdr": ".nrrd"})
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4}
_PLAUSIBLE_UM = (1e-3, 1e3)  # a microscope pixel lies between 1 nm and 1 mm
_SCREEN_DPI = (72.0, 96.0)  # resolution tags left at a screen default say nothing about the specimen


@dataclass(frozen=True)
class ImageInfo:
    """What ``fide align`` needs to know about an image file before reading its pixels.

    Attributes:
        path: the file.
        levels: (X, Y) shape of every resolution level, full resolution first (one entry without a pyramid).
        channels: samples per pixel (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA).
        dtype: the pixel type on disk.
        pixel_size_um: (x, y) micrometres per pixel from the metadata, or None when absent or implausible.
        frame: the ITK physical frame ``SimpleITK.ReadImage`` gives the file, or None when SimpleITK cannot read it.
        family: output suffix of the file's format family (``.ome.tif``, ``.png``, ``.jpg``, ``.nii.gz``, ...).
    """

    path: Path
    levels: tuple[tuple[int, int], ...]
    channels: int
    dtype: np.dtype
    pixel_size_um: tuple[float, float] | None
    frame: PhysicalFrame | None
    family: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.levels[0]


def format_family(path: str | Path) -> str:
    """The output suffix for images of ``path``'s format family (OME-TIFF for every TIFF flavour)."""
    name = Path(path).name.lower()
    if name.endswith(_TIFF):
        return ".ome.tif"
    for suffix, family in _FAMILIES.items():
        if name.endswith(suffix):
            return family
    raise DatasetError(f"{path}: unsupported image format (TIFF, PNG, JPEG, NIfTI, MHA or NRRD expected)")


def _is_tiff(path: Path) -> bool:
    return path.name.lower().endswith(_TIFF)


def _plausible(size: tuple[float, float] | None) -> tuple[float, float] | None:
    if size is None or not all(math.isfinite(v) and _PLAUSIBLE_UM[0] <= v <= _PLAUSIBLE_UM[1] for v in size):
        return None
    return float(size[0]), float(size[1])


def _ome_pixel_size(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    pixels = tifffile.xml2dict(tif.ome_metadata).get("OME", {}).get("Image", {})
    pixels = (pixels[0] if isinstance(pixels, list) else pixels).get("Pixels", {})
    try:
        sizes = [
            float(pixels[f"PhysicalSize{a}"]) * _UM_PER_UNIT[pixels.get(f"PhysicalSize{a}Unit", "µm")] for a in "XY"
        ]
    except (KeyError, TypeError, ValueError):
        return None
    return sizes[0], sizes[1]


def _tiff_resolution(page: tifffile.TiffPage) -> tuple[float, float] | None:
    """Pixel size from XResolution/YResolution (pixels per unit) and ResolutionUnit (2 inch, 3 cm)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2)
    values = []
    for key in ("XResolution", "YResolution"):
        numerator, denominator = tags[key].value
        values.append(numerator / denominator if denominator else 0.0)
    if unit is None or min(values) <= 0 or (unit == 25400.0 and values[0] in _SCREEN_DPI):
        return None
    return unit / values[0], unit / values[1]


def _sitk_frame(path: Path) -> PhysicalFrame | None:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return PhysicalFrame.of_image(reader)


def _inspect_tiff(path: Path) -> ImageInfo:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes.replace("S", "C") if "C" not in series.axes else series.axes
            levels, channels = [], 1
            for level in series.levels:
                shape = dict(zip(axes, level.shape))
                levels.append((int(shape["X"]), int(shape["Y"])))
                channels = int(shape.get("C", 1))
            if "C" in series.axes and channels not in (1, 3):  # separate channel pages, not samples: no alpha
                raise DatasetError(
                    f"{path}: {channels} separate channels; expected 1 (grey) or 3 (RGB); extract one channel first"
                )
            extra = {a: n for a, n in zip(axes, series.shape) if a not in "XYC" and n > 1}
            if extra:
                raise DatasetError(f"{path}: expected one 2D image, found extra axes {extra} (split the stack first)")
            size = _ome_pixel_size(tif) or _tiff_resolution(series.levels[0].keyframe)
            dtype = np.dtype(series.dtype)
    except DatasetError:
        raise
    except Exception as err:  # tifffile raises TiffFileError, ValueError, struct.error, ... on damaged files
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DatasetError(f"{path}: cannot read TIFF, damaged or not a TIFF ({reason})") from None
    return ImageInfo(path, tuple(levels), channels, dtype, _plausible(size), _sitk_frame(path), ".ome.tif")


def inspect_image(path: str | Path) -> ImageInfo:
    """Shape, channels, dtype, pixel size and ITK frame of an image file, without decoding its pixels (TIFF).

    Raises:
        DatasetError: missing, unreadable or unsupported file, or not a single 2D image.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    family = format_family(path)
    if _is_tiff(path):
        return _inspect_tiff(path)
    frame = _sitk_frame(path)
    array = _read_array(path)  # small formats: reading is the cheapest way to know the layout
    spatial = [n for n in array.shape[:3]]
    channels = int(np.prod(array.shape[2:])) if array.ndim > 2 else 1
    size = None
    if family in (".nii.gz", ".mha", ".nrrd") and frame is not None and frame.spacing[:2] != (1.0, 1.0):
        size = (frame.spacing[0] * 1e3, frame.spacing[1] * 1e3)  # ITK spacing of medical formats is in mm
    return ImageInfo(path, ((spatial[0], spatial[1]),), channels, array.dtype, _plausible(size), frame, family)


def read_level(info: ImageInfo, level: int = 0) -> np.ndarray:
    """The pixels of one resolution level: (X, Y, C) in the file's dtype, fide array order.

    TIFFs are read with tifffile (pyramids, BigTIFF, OME); a TIFF compression tifffile cannot decode without
    ``imagecodecs`` (JPEG, LZW) is read with SimpleITK instead, at full resolution whatever ``level`` asked for
    (the returned array's shape says which).
    """
    path = info.path
    if not _is_tiff(path):
        array = _read_array(path)
        return array.reshape(array.shape[0], array.shape[1], -1)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.levels[level].asarray()
            axes = series.axes.replace("S", "C") if "C" not in series.axes else series.axes
    except Exception as err:  # noqa: BLE001 - missing codec or damaged file: SimpleITK is the second reader
        # SimpleITK reads the full-resolution page only; callers take the level's size from the array they get
        logger.info("%s: tifffile cannot decode level %d (%s); reading with SimpleITK", path, level, str(err)[:160])
        array = _read_array(path)
        return array.reshape(array.shape[0], array.shape[1], -1)
    squeezed = "".join(a for a, n in zip(axes, array.shape) if a in "XYC" or n > 1)
    array = array.reshape([n for a, n in zip(axes, array.shape) if a in "XYC" or n > 1])
    order = [squeezed.index("X"), squeezed.index("Y")] + ([squeezed.index("C")] if "C" in squeezed else [])
    array = np.transpose(array, order)  # (rows, columns[, samples]) -> (X, Y[, C])
    return array if array.ndim == 3 else array[:, :, None]


class WindowReader:
    """Windows of an image's full-resolution level, decoding only the TIFF strips or tiles they touch.

    A TIFF whose full-resolution level is one contiguous page (strips or tiles, any codec tifffile decodes) is read
    segment by segment; anything else (other formats, planar TIFFs, a codec tifffile lacks) is read whole once, on
    the first window, and cut (its memory is then the level's). Use as a context manager (the file stays open).

    Args:
        info: the image (:func:`inspect_image`).
        array: the (X, Y, C) pixels when the image is already in memory (windows are views of it).
    """

    def __init__(self, info: ImageInfo, array: np.ndarray | None = None) -> None:
        self.info, self._array, self._tif, self._page = info, array, None, None
        if array is None and _is_tiff(info.path):
            try:
                self._tif = tifffile.TiffFile(info.path)
                page = self._tif.series[0].levels[0].keyframe
                layout = dict(zip("YXS", page.shaped[2:])) if page.planarconfig == 1 else None  # contiguous only
                if (
                    layout is not None
                    and len(self._tif.series[0].levels[0].pages) == 1
                    and page.shape[:2]
                    == (
                        info.shape[1],
                        info.shape[0],
                    )
                ):
                    self._page = self._tif.series[0].levels[0].pages[0]
            except Exception as err:  # noqa: BLE001 - any oddity: read the level whole instead
                logger.info("%s: windows read from the whole level (%s)", info.path, str(err)[:120])

    def __enter__(self) -> WindowReader:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __call__(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Pixels ``[x0, x1) x [y0, y1)`` (clipped to the image): (X, Y, C), the file's dtype."""
        width, height = self.info.shape
        x0, x1, y0, y1 = max(0, x0), min(width, x1), max(0, y0), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((0, 0, self.info.channels), self.info.dtype)
        if self._page is not None:
            try:
                return self._segments(x0, x1, y0, y1)
            except Exception as err:  # noqa: BLE001 - a codec tifffile lacks: the whole level once
                logger.info("%s: windows read from the whole level (%s)", self.info.path, str(err)[:120])
                self._page = None
        if self._array is None:
            self._array = read_level(self.info, 0)
        return self._array[x0:x1, y0:y1]

    def _segments(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        page, handle = self._page, self._tif.filehandle
        rows, cols = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, page.shape[1])
        across = -(-page.shape[1] // cols)
        out = np.empty((y1 - y0, x1 - x0, self.info.channels), self.info.dtype)  # (row, column, C) first
        for ty in range(y0 // rows, -(-y1 // rows)):
            for tx in range(x0 // cols, -(-x1 // cols)):
                index = ty * across + tx
                handle.seek(page.dataoffsets[index])
                segment, start, _ = page.decode(handle.read(page.databytecounts[index]), index)
                segment = segment.reshape(segment.shape[1], segment.shape[2], -1)  # (rows, columns, C)
                r0, c0 = start[2], start[3]
                rr = slice(max(y0, r0), min(y1, r0 + segment.shape[0]))
                cc = slice(max(x0, c0), min(x1, c0 + segment.shape[1]))
                out[rr.start - y0 : rr.stop - y0, cc.start - x0 : cc.stop - x0] = segment[
                    rr.start - r0 : rr.stop - r0, cc.start - c0 : cc.stop - c0
                ]
        return out.transpose(1, 0, 2)


COMPRESSIONS = {"zlib": "zlib", "jpeg": "jpeg", "none": None}  # option name -> tifffile's compression


def compression_option(name: str) -> str | None:
    """tifffile's compression for an option name, which must be one of :data:`COMPRESSIONS`."""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(COMPRESSIONS)}, got {name!r}")
    return COMPRESSIONS[name]


def write_ome_pyramid(
    path: Path,
    level_shapes: list[tuple[int, int]],
    channels: int,
    dtype: np.dtype,
    levels: Iterator[Iterator[np.ndarray]],
    tile: int,
    *,
    compression: str = "zlib",
    pixel_size_um: tuple[float, float] | None = None,
    channel_name: str | None = None,
    colour: int | None = None,
) -> Path:
    """Write a tiled, pyramidal OME-TIFF (BigTIFF, sub-resolutions in SubIFDs) tile by tile; atomically.

    QuPath, napari (tifffile), Bio-Formats / Fiji, OMERO and SimpleITK (the full resolution) read it.

    Args:
        path: destination ``.ome.tif``.
        level_shapes: (X, Y) of every level, full resolution first, each level half the one before (rounded up).
        channels: 1 (grey) or 3 (RGB, interleaved samples).
        dtype: pixel type.
        levels: one iterator of tiles per level, in level order; each yields the level's tiles row of tiles by row
            of tiles, each (tile, tile[, C]) in the TIFF's (row, column, sample) order, zero-padded at the edges.
            A level's iterator is only started after the previous one is exhausted.
        tile: tile side, pixels, a multiple of 16.
        compression: "zlib", "jpeg" (lossy; uint8 grey or RGB only; needs ``imagecodecs``) or "none".
        pixel_size_um: (x, y) micrometres per full-resolution pixel: OME ``PhysicalSizeX/Y`` and, per level,
            TIFF resolution tags (cm) of that level's pixels (``2**k`` times larger).
        channel_name: OME ``Channel/@Name`` (one channel: RGB samples form one channel).
        colour: OME ``Channel/@Color``, a signed 32-bit RGBA integer (white is -1); None for none (RGB).

    Raises:
        ValueError: bad compression, tile, channels, or JPEG of a type other than uint8.
    """
    codec = compression_option(compression)
    if tile % 16 or tile < 16:
        raise ValueError(f"tile must be a positive multiple of 16 px (TIFF), got {tile}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if codec == "jpeg" and np.dtype(dtype) != np.uint8:
        raise ValueError(f"compression 'jpeg' needs uint8 pixels, got {np.dtype(dtype)}; use 'zlib' or 'none'")
    metadata: dict = {"axes": "YXS" if channels > 1 else "YX"}
    channel: dict = {}
    if channel_name:
        channel["Name"] = [channel_name]
    if colour is not None:
        channel["Color"] = [int(colour)]
    if channel:
        metadata["Channel"] = channel
    if pixel_size_um is not None:
        metadata.update(PhysicalSizeX=pixel_size_um[0], PhysicalSizeY=pixel_size_um[1])
        metadata.update(PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
    options = {
        "dtype": np.dtype(dtype),
        "tile": (tile, tile),
        "compression": codec,
        "photometric": "rgb" if channels == 3 else "minisblack",
    }
    tmp = atomic_path(path)
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
            for k, (shape, tiles) in enumerate(zip(level_shapes, levels)):
                width, height = shape
                extra: dict = {}
                if pixel_size_um is not None:
                    size = (pixel_size_um[0] * 2**k, pixel_size_um[1] * 2**k)
                    extra = {"resolution": (1e4 / size[0], 1e4 / size[1]), "resolutionunit": "CENTIMETER"}
                if k == 0:
                    extra.update(subifds=len(level_shapes) - 1, metadata=metadata)
                else:
                    extra.update(subfiletype=1, metadata=None)
                data_shape = (height, width, channels) if channels > 1 else (height, width)
                tif.write(tiles, shape=data_shape, **options, **extra)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_warped_sitk(path: Path, array: np.ndarray, frame: PhysicalFrame | None) -> Path:
    """Write a (X, Y, C) array with SimpleITK (PNG, JPEG, NIfTI, MHA, NRRD) on the given frame; atomically."""
    data = np.ascontiguousarray(np.transpose(array, (1, 0, 2)))  # SimpleITK wants (rows, columns, components)
    image = sitk.GetImageFromArray(data if data.shape[2] > 1 else data[:, :, 0], isVector=data.shape[2] > 1)
    if frame is not None and frame.dimension == 2:
        image.SetOrigin(frame.origin)
        image.SetSpacing(frame.spacing)
        image.SetDirection(frame.direction)
    elif frame is not None:  # a NIfTI with a size-1 third axis: keep that axis so the overlay matches the fixed file
        image = sitk.JoinSeries(image)
        image.SetOrigin(frame.origin)
        image.SetSpacing(frame.spacing)
        image.SetDirection(frame.direction)
    tmp = atomic_path(path)
    try:
        sitk.WriteImage(image, str(tmp), useCompression=path.suffix != ".jpg")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
