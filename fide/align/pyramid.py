"""Viewer-ready images: a tiled, pyramidal OME-TIFF streamed from bands of full-resolution rows.

The full resolution is written tile by tile as its bands arrive; each band is also halved (2 x 2 block mean, or
every other pixel for labels) and spooled to a raw file beside the output, from which the next level is written
and halved in turn, down to a level whose longest side is at most ``MIN_SIDE_PX``. Peak memory is one band of
each level, never a whole level. Level k's pixel (x, y) covers full-resolution pixels ``2**k x .. 2**k (x + 1) - 1``,
so its centre is at ``2**k (x + 0.5) - 0.5`` (``fide.geometry.resize_matrix(..., centres="area")`` for sizes that
halve exactly); its pixel size is ``2**k`` times the full resolution's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from fide.io.microscopy import write_ome_pyramid

from .resample import PixelMap, cast_pixels, iter_warped_bands, without_alpha

__all__ = ["write_pyramid", "write_warped", "level_shapes", "halve", "TILE_PX", "MIN_SIDE_PX", "WHITE"]

TILE_PX = 512  # tile side of written images (and rows per band of the streamed resampling)
MIN_SIDE_PX = 1024  # the smallest level's longest side is at most this
WHITE = -1  # OME Channel/@Color of grey channels: RGBA 0xFFFFFFFF as a signed 32-bit integer
_CHUNK_COLUMNS = 2048  # columns per float block when halving a band (bounds its float copy)


def level_shapes(shape_xy: tuple[int, int], min_side: int = MIN_SIDE_PX) -> list[tuple[int, int]]:
    """(X, Y) of every level: the full resolution, then halves (rounded up) until the longest side is ``min_side``
    or less."""
    if min_side < 1:
        raise ValueError(f"min_side must be at least 1 px, got {min_side}")
    shapes = [(int(shape_xy[0]), int(shape_xy[1]))]
    while max(shapes[-1]) > min_side:
        shapes.append(tuple((n + 1) // 2 for n in shapes[-1]))  # type: ignore[arg-type]
    return shapes


def halve(band: np.ndarray, labels: bool = False) -> np.ndarray:
    """A (rows, X, C) band at half resolution: (ceil(rows / 2), ceil(X / 2), C), its dtype.

    Intensities: the mean of each 2 x 2 block (an odd last row or column is repeated), rounded for integer types.
    Labels: the block's top-left pixel, so every value is one of the band's (no mixed labels).
    """
    if labels:
        return np.ascontiguousarray(band[::2, ::2])
    rows, cols = band.shape[:2]
    out = np.empty(((rows + 1) // 2, (cols + 1) // 2, band.shape[2]), band.dtype)
    for start in range(0, cols, _CHUNK_COLUMNS):
        block = band[:, start : start + _CHUNK_COLUMNS].astype(np.float32)
        if block.shape[0] % 2:
            block = np.concatenate([block, block[-1:]], 0)
        if block.shape[1] % 2:
            block = np.concatenate([block, block[:, -1:]], 1)
        mean = block.reshape(block.shape[0] // 2, 2, block.shape[1] // 2, 2, -1).mean((1, 3))
        out[:, start // 2 : start // 2 + mean.shape[1]] = cast_pixels(mean, band.dtype)
    return out


def _tiles(bands: Iterator[np.ndarray], tile: int, spool, labels: bool) -> Iterator[np.ndarray]:
    """The tiles of a level from its bands of ``tile`` rows; each band's half goes to ``spool`` (a file or None)."""
    for band in bands:
        if spool is not None:
            spool.write(halve(band, labels).tobytes())
        for x0 in range(0, band.shape[1], tile):
            piece = band[:, x0 : x0 + tile]
            padded = np.zeros((tile, tile, band.shape[2]), band.dtype)
            padded[: piece.shape[0], : piece.shape[1]] = piece
            yield padded if band.shape[2] > 1 else padded[:, :, 0]


def _read_back(path: Path, shape_xy: tuple[int, int], channels: int, dtype: np.dtype, rows: int):
    """Bands of ``rows`` rows of a spooled level, (rows, X, C), read with plain reads (no mapping)."""
    width, height = shape_xy
    row_items = width * channels
    with open(path, "rb") as handle:
        for y0 in range(0, height, rows):
            count = min(rows, height - y0)
            data = np.fromfile(handle, dtype=dtype, count=count * row_items)
            yield data.reshape(count, width, channels)


def write_pyramid(
    path: Path,
    shape_xy: tuple[int, int],
    channels: int,
    dtype: np.dtype,
    bands: Iterator[np.ndarray],
    *,
    tile: int = TILE_PX,
    min_side: int = MIN_SIDE_PX,
    labels: bool = False,
    compression: str = "zlib",
    pixel_size_um: tuple[float, float] | None = None,
    channel_name: str | None = None,
    colour: int | None = None,
) -> Path:
    """Write full-resolution bands as a tiled pyramidal OME-TIFF (see :func:`fide.io.microscopy.write_ome_pyramid`).

    Args:
        path: destination ``.ome.tif`` (written atomically; spool files live beside it while writing).
        shape_xy: (X, Y) full-resolution size.
        channels: 1 or 3.
        dtype: pixel type (kept on every level).
        bands: consecutive (rows, X, C) bands of exactly ``tile`` rows (the last may be shorter), top to bottom.
        tile: tile side, px (multiple of 16; 512 by default).
        min_side: the smallest level's longest side is at most this (1024 by default).
        labels: halve by taking every other pixel (label and mask images), not by block means.
        compression, pixel_size_um, channel_name, colour: as in ``write_ome_pyramid``.
    """
    shapes = level_shapes(shape_xy, min_side)
    dtype = np.dtype(dtype)
    with tempfile.TemporaryDirectory(prefix=".pyramid-", dir=Path(path).parent) as work:
        spools = [Path(work) / f"level{k}.raw" for k in range(len(shapes))]

        def levels() -> Iterator[Iterator[np.ndarray]]:
            level_bands: Iterator[np.ndarray] = bands
            for k in range(len(shapes)):
                last = k == len(shapes) - 1
                with open(spools[k + 1], "wb") if not last else nullcontext() as spool:
                    yield _tiles(level_bands, tile, spool, labels)
                if not last:
                    level_bands = _read_back(spools[k + 1], shapes[k + 1], channels, dtype, tile)

        return write_ome_pyramid(
            Path(path),
            shapes,
            channels,
            dtype,
            levels(),
            tile,
            compression=compression,
            pixel_size_um=pixel_size_um,
            channel_name=channel_name,
            colour=colour,
        )


def write_warped(
    path: Path,
    source: np.ndarray,
    mapping: PixelMap,
    target_shape: tuple[int, int],
    *,
    labels: bool = False,
    compression: str = "zlib",
    pixel_size_um: tuple[float, float] | None = None,
    channel_name: str | None = None,
    tile: int = TILE_PX,
    min_side: int = MIN_SIDE_PX,
    progress: str = "",
) -> Path:
    """Resample ``source`` through ``mapping`` onto a ``target_shape`` grid, streamed into a pyramidal OME-TIFF.

    Peak memory: the source (in its own dtype) plus one band of ``tile`` rows per level.

    Args:
        path: destination ``.ome.tif``.
        source: (Xs, Ys, C) source pixels (alpha is dropped for intensities).
        mapping: target full-resolution pixels (x, y) → source pixels.
        target_shape: (X, Y) of the target grid.
        labels: nearest neighbour and label halving (label and mask images; dtype and values kept).
        compression: "zlib", "jpeg" (uint8 only, lossy) or "none".
        pixel_size_um: (x, y) µm per target pixel (None: unknown, none written).
        channel_name: OME channel name; grey channels are coloured white.
    """
    colour = source if labels else without_alpha(source)
    if colour.shape[2] not in (1, 3):
        raise ValueError(f"image must have 1 (grey) or 3 (RGB) channels to write, got {colour.shape[2]}")
    if labels and compression == "jpeg":
        raise ValueError("compression 'jpeg' is lossy and would change label values; use 'zlib' or 'none'")
    bands = iter_warped_bands(colour, mapping, target_shape, rows=tile, progress=progress, labels=labels)
    return write_pyramid(
        path,
        target_shape,
        colour.shape[2],
        colour.dtype,
        bands,
        tile=tile,
        min_side=min_side,
        labels=labels,
        compression=compression,
        pixel_size_um=pixel_size_um,
        channel_name=channel_name,
        colour=WHITE if colour.shape[2] == 1 and not labels else None,
    )
