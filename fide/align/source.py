"""One input of ``fide align`` / :func:`fide.register`: a file or a numpy array, its pixel size and its ITK frame.

Axis convention (the one of the whole align API): a numpy array is given as numpy users hold images,
``(row, column[, channel])``, which is ``SimpleITK.GetArrayFromImage``'s layout; a point is ``(x, y)`` =
(column, row), pixels, pixel centres at integers, which is ITK's continuous index and fide's array order
``(i, j)`` for the same image (``fide.geometry``). Inside, images are ``(C, X, Y)`` tensors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fide import geometry
from fide.geometry import PhysicalFrame
from fide.io import DatasetError
from fide.io.images import alpha_full_scale
from fide.io.microscopy import ImageInfo, inspect_image, read_level

__all__ = ["ImageSource", "open_source", "working_image", "WorkingImage"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageSource:
    """An image to register: its metadata, and its pixels when it came as an array.

    Attributes:
        info: shape per level (X, Y), channels, dtype, metadata pixel size, SimpleITK frame, format family.
        name: the path or ``"<array>"`` (for messages).
        pixel_size_um: (x, y) micrometres per pixel used for registration (flag, else metadata), or None.
        array: (X, Y, C) pixels of an in-memory image (None for files: read on demand).
    """

    info: ImageInfo
    name: str
    pixel_size_um: tuple[float, float] | None
    array: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(X, Y) full-resolution size."""
        return self.info.shape

    @property
    def frame(self) -> PhysicalFrame:
        """The ITK physical frame: SimpleITK's for a file it reads, else origin 0, identity, the pixel size in mm."""
        if self.info.frame is not None:
            return self.info.frame
        spacing = tuple(s / 1e3 for s in self.pixel_size_um) if self.pixel_size_um else (1.0, 1.0)
        return PhysicalFrame((0.0, 0.0), spacing, (1.0, 0.0, 0.0, 1.0))

    def read(self, level: int = 0) -> np.ndarray:
        """(X, Y, C) pixels of a resolution level, the file's dtype."""
        return self.array if self.array is not None else read_level(self.info, level)


def _parse_size(value: float | tuple[float, float] | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    size = (float(value), float(value)) if np.isscalar(value) else tuple(float(v) for v in value)  # type: ignore[arg-type]
    if len(size) != 2 or not all(np.isfinite(v) and v > 0 for v in size):
        raise ValueError(f"{name} must be a positive pixel size in µm (or an (x, y) pair), got {value!r}")
    return size  # type: ignore[return-value]


def open_source(
    image: str | Path | np.ndarray | torch.Tensor, pixel_size_um: float | tuple[float, float] | None, role: str
) -> ImageSource:
    """Wrap a path or a (row, column[, channel]) array.

    Args:
        image: an image file, or an array (rows, columns) / (rows, columns, channels), channels in 1-4.
        pixel_size_um: µm per pixel (x, y) or one value; overrides the file's metadata when given.
        role: "fixed" or "moving" (for messages).
    """
    flag = _parse_size(pixel_size_um, f"{role} pixel size")
    if isinstance(image, (str, Path)):
        info = inspect_image(image)
        if flag and info.pixel_size_um and not np.allclose(flag, info.pixel_size_um, rtol=0.01):
            logger.info(
                "%s: pixel size %s µm given, metadata says %s µm: using the given one", image, flag, info.pixel_size_um
            )
        return ImageSource(info, str(image), flag or info.pixel_size_um)
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or min(array.shape[:2]) < 2:
        raise ValueError(f"{role} image must be (rows, columns[, channels]) with 1-4 channels, got {array.shape}")
    if array.dtype == bool or not np.isfinite(array.astype(np.float64, copy=False)).all():
        raise ValueError(f"{role} image must hold finite numbers, got dtype {array.dtype} with NaN/inf or booleans")
    array = np.transpose(array, (1, 0, 2))  # (row, column, C) -> (X, Y, C)
    info = ImageInfo(
        Path("<array>"), ((array.shape[0], array.shape[1]),), array.shape[2], array.dtype, None, None, ".ome.tif"
    )
    return ImageSource(info, f"<{role} array>", flag, array)


@dataclass
class WorkingImage:
    """An image at working resolution: registration input and QC picture.

    Attributes:
        pixels: (C, X, Y) float32, C in {1, 3}, intensities on a 0-255 scale.
        to_working: (3, 3) float64 map of full-resolution pixel coordinates to working ones, array order.
    """

    pixels: torch.Tensor
    to_working: torch.Tensor


def _level_for(info: ImageInfo, shape: tuple[int, int]) -> int:
    """The smallest pyramid level at least as large as ``shape`` on both axes (0 when none is)."""
    fits = [k for k, level in enumerate(info.levels) if level[0] >= shape[0] and level[1] >= shape[1]]
    return max(fits) if fits else 0


def _block_mean(array: np.ndarray, factor: int, rows: int = 512) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks of an (X, Y, C) array, float32, in chunks (never a float copy)."""
    x_blocks, y_blocks = array.shape[0] // factor, array.shape[1] // factor
    out = np.empty((x_blocks, y_blocks, array.shape[2]), np.float32)
    step = max(1, rows // factor)
    for start in range(0, y_blocks, step):
        stop = min(y_blocks, start + step)
        chunk = array[: x_blocks * factor, start * factor : stop * factor].astype(np.float32)
        out[:, start:stop] = chunk.reshape(x_blocks, factor, stop - start, factor, -1).mean((1, 3))
    return out


def _to_display_range(colour: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Intensities on the 0-255 scale fide's preprocessing assumes (uint8 unchanged).

    RGB: the type's full scale maps to 255 (float RGB: [0, 1] when its maximum is at most 1). Grey of another type
    than uint8: its 99.9th percentile maps to 255 (12-bit SHG in 16-bit files would otherwise look nearly empty).
    """
    if dtype == np.uint8:
        return colour
    if colour.shape[0] == 3:
        scale = alpha_full_scale(dtype) if np.issubdtype(dtype, np.integer) else (1.0 if colour.max() <= 1 else 255.0)
        return colour * (255.0 / scale)
    top = float(np.percentile(colour, 99.9))
    return colour * (255.0 / top) if top > 0 else colour


def working_image(source: ImageSource, shape: tuple[int, int]) -> WorkingImage:
    """Read ``source`` at the pyramid level nearest above ``shape`` (X, Y) and reduce it to exactly ``shape``.

    Alpha: composited before reducing, on white behind RGB (bright-field background) and black behind grey.
    """
    level = _level_for(source.info, shape)
    array = source.read(level)
    level_shape = array.shape[:2]
    to_working = geometry.resize_matrix(source.shape, level_shape, centres="area")
    factor = int(min(level_shape[0] // shape[0], level_shape[1] // shape[1]))
    if factor >= 2:  # an integer block mean first: no float copy of a large level
        block_shape = (level_shape[0] // factor, level_shape[1] // factor)
        covered = (block_shape[0] * factor, block_shape[1] * factor)
        to_working = geometry.resize_matrix(covered, block_shape, centres="area") @ to_working
        reduced, level_shape = _block_mean(array, factor), block_shape
    else:
        reduced = array.astype(np.float32)
    channels = reduced.shape[2]
    if channels not in (1, 2, 3, 4):
        raise DatasetError(f"{source.name}: image has {channels} channels, expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    colour = reduced[..., :3] if channels >= 3 else reduced[..., :1]
    if channels in (2, 4):  # the block mean keeps alpha on the type's scale
        alpha = (reduced[..., -1:] / alpha_full_scale(array.dtype)).clip(0, 1)
        if not np.all(alpha >= 1.0):
            background = alpha_full_scale(array.dtype) if channels == 4 else 0.0
            colour = colour * alpha + background * (1 - alpha)
    pixels = torch.from_numpy(np.ascontiguousarray(_to_display_range(colour.transpose(2, 0, 1), array.dtype)))
    if tuple(level_shape) != tuple(shape):
        pixels = geometry.downsample(pixels[None].float(), shape)[0]
        to_working = geometry.resize_matrix(level_shape, shape, centres="corner") @ to_working
    return WorkingImage(pixels.float().contiguous(), to_working)
