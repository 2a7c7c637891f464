"""Synthetic images larger than can be rendered in memory: a rendered picture enlarged band by band into a tiled,
pyramidal OME-TIFF (:func:`write_enlarged`), with the map that moves its landmarks alike (:func:`enlarged_points`).

:func:`fide.synth.make_pair` holds several float copies of the whole pair (3.3 GB at 4096 px, ~50 GB at 16 384), so
``fide example-pair`` renders large pairs at 4096 px and enlarges them here: one band of output rows at a time in
float, so peak memory is the picture plus one band per pyramid level, whatever the output size. The enlarged image
holds no detail finer than the picture it came from.

**Pixel-centre convention.** Points are (x, y) = (column, row), pixel centres at integers (ITK's continuous index),
pixel k covering [k - 0.5, k + 0.5]. Enlarging by ``factor`` puts the picture's outer edges on the output's (the
``"area"`` convention of :func:`fide.geometry.resize_matrix`, the inverse of a block mean): a picture point x lands
at ``(x + 0.5) * factor - 0.5``, and output pixel P shows the picture at ``(P + 0.5) / factor - 0.5`` (clamped to
the picture's outermost centres). The same factor on two images whose pixel sizes differ 2:1 keeps that ratio
exactly (the bright field of ``fide example-pair``).

**Bilinear**, not bicubic: the output stays within the picture's range (bicubic overshoots beside sharp fibres and
bright dots, and the clipping of the overshoot at 0 and 255 is a non-linear change to the dark SHG background);
bicubic's sharper look adds no detail the picture lacks; a symmetric kernel keeps a dot's centroid at the mapped
point either way; and two taps per axis keep the band cheap. The values equal torch's
``interpolate(mode="bilinear", align_corners=False)`` at the same scale factor, rounded to the picture's integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fide.align.pyramid import MIN_SIDE_PX, TILE_PX, WHITE, write_pyramid

__all__ = ["ENLARGE_ABOVE_PX", "write_enlarged", "enlarged_points", "enlarged_side"]

# larger pairs are rendered at this side and enlarged: make_pair holds several float copies of the whole pair
# (peak 3.3 GB at 4096 px, 11.5 GB at 8192, ~50 GB at 16 384)
ENLARGE_ABOVE_PX = 4096


def enlarged_points(points: np.ndarray, factor: float) -> np.ndarray:
    """(N, 2) picture points (x, y) → where they lie on the enlarged image, (N, 2) float64."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * factor - 0.5


def enlarged_side(side: int, factor: float) -> int:
    """Pixels along an axis of ``side`` picture pixels once enlarged: the whole pixels of ``side * factor``."""
    return int(math.floor(side * factor + 1e-9))  # 1e-9: a product meant to be whole is never cut to the one below


def _taps(outputs: np.ndarray, side: int, factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two picture pixels (i0, i1) each output pixel in ``outputs`` (M,) lies between, and the weight of i1."""
    where = np.clip((outputs + 0.5) / factor - 0.5, 0, side - 1)
    low = np.floor(where).astype(np.int64)
    return low, np.minimum(low + 1, side - 1), (where - low).astype(np.float32)


def _bands(picture: np.ndarray, factor: float, rows: int) -> Iterator[np.ndarray]:
    """Bands of ``rows`` output rows (the last may be shorter) of the enlarged (row, column, C) ``picture``:
    (rows, X, C) in the picture's dtype, X = :func:`enlarged_side` of its columns. Each band interpolates across
    only the picture rows it needs, then down; every output row is computed alike, so band boundaries are
    invisible."""
    height, width = picture.shape[:2]
    col0, col1, col_w = _taps(np.arange(enlarged_side(width, factor)), width, factor)
    col_w = col_w[None, :, None]
    out_height = enlarged_side(height, factor)
    for r0 in range(0, out_height, rows):
        row0, row1, row_w = _taps(np.arange(r0, min(r0 + rows, out_height)), height, factor)
        low, high = int(row0.min()), int(row1.max()) + 1
        source = picture[low:high].astype(np.float32)  # (k, W, C), k ~ rows / factor + 2
        across = source[:, col0] * (1 - col_w) + source[:, col1] * col_w  # (k, X, C)
        row_w = row_w[:, None, None]
        band = across[row0 - low] * (1 - row_w) + across[row1 - low] * row_w
        yield np.rint(band).astype(picture.dtype)  # in range: a convex combination of the picture's values


def write_enlarged(
    path: str | Path,
    picture: np.ndarray,
    factor: float,
    pixel_size_um: float,
    *,
    channel_name: str | None = None,
    tile: int = TILE_PX,
    min_side: int = MIN_SIDE_PX,
) -> Path:
    """Enlarge ``picture`` by ``factor`` (bilinear, band by band) into a tiled, pyramidal OME-TIFF.

    Args:
        path: destination ``.ome.tif`` (BigTIFF, zlib tiles, sub-resolutions in SubIFDs; written atomically).
        picture: (rows, columns) grey or (rows, columns, 3) RGB integer pixels, e.g. uint8.
        factor: output pixels per picture pixel (> 0); the output is :func:`enlarged_side` of each side.
        pixel_size_um: µm per output pixel (OME ``PhysicalSizeX/Y``; each level's TIFF resolution its own).
        channel_name: OME channel name (grey channels are coloured white).
        tile: tile side and rows per band, px (a multiple of 16).
        min_side: the smallest level's longest side is at most this.

    Returns:
        ``path``. The landmarks of ``picture`` move by :func:`enlarged_points` with the same ``factor``.
    """
    picture = np.asarray(picture)
    if not np.issubdtype(picture.dtype, np.integer) or picture.ndim not in (2, 3):
        raise ValueError(f"picture must be (rows, columns[, 3]) integer pixels, got {picture.shape} {picture.dtype}")
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor}")
    picture = picture if picture.ndim == 3 else picture[:, :, None]
    shape_xy = (enlarged_side(picture.shape[1], factor), enlarged_side(picture.shape[0], factor))
    return write_pyramid(
        Path(path),
        shape_xy,
        picture.shape[2],
        picture.dtype,
        _bands(picture, factor, tile),
        tile=tile,
        min_side=min_side,
        pixel_size_um=(pixel_size_um, pixel_size_um),
        channel_name=channel_name,
        colour=WHITE if picture.shape[2] == 1 else None,
    )
