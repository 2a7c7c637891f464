"""Full-resolution point maps (:class:`PixelMap`) and resampling an image through one, in bands and tiles.

:class:`fide.align.registration.Registration` maps points and warps arrays with these; :mod:`fide.align.export`
streams the same bands into its warped files. Both import them from here, so the registration needs the writers only
to save.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fide import geometry

__all__ = ["PixelMap", "warp_array", "iter_warped_bands", "without_alpha", "cast_pixels"]

_BAND_ROWS = 256  # rows per band of the streamed resampling (when the caller does not choose)
_TILE_PX = 1024  # columns per tile within a band: a rotated tile's source box stays small


@dataclass
class PixelMap:
    """A point map between full-resolution pixel grids: ``post(pre(p) + u(pre(p)))``, (x, y) order, float64.

    Attributes:
        pre: (3, 3) source full-resolution pixels to the field's grid (or straight to the target when no field).
        field: (1, 2, h, w) displacement on that grid, its pixels, or None (an affine map).
        post: (3, 3) the field's target grid to target full-resolution pixels.
    """

    pre: torch.Tensor
    field: torch.Tensor | None = None
    post: torch.Tensor = dataclasses.field(default_factory=lambda: torch.eye(3, dtype=torch.float64))

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 2) source points, pixels, (x, y) → (N, 2) target points, float64."""
        points = geometry.apply_affine_to_points(self.pre, points.to(torch.float64))
        if self.field is not None:
            points = geometry.map_points(points, self.field.to(torch.float64))
        return geometry.apply_affine_to_points(self.post, points)

    @property
    def affine(self) -> torch.Tensor | None:
        """The (3, 3) pixel affine when the map has no field."""
        return self.post @ self.pre if self.field is None else None


def without_alpha(array: np.ndarray) -> np.ndarray:
    """(X, Y, C) without its alpha channel (grey + alpha → grey, RGBA → RGB)."""
    return array[..., :-1] if array.shape[2] in (2, 4) else array


def cast_pixels(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``values`` in ``dtype``: rounded and clipped to its range for integer types."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _warp_tile(
    source: torch.Tensor, mapping: PixelMap, origin: tuple[int, int], shape: tuple[int, int]
) -> torch.Tensor:
    """Resample a (C, Xs, Ys) source on target pixels ``origin + [0, shape)``: (C, *shape) float32, 0 outside.

    Only the source box the tile maps into is converted to float: the source stays in its own dtype.
    """
    grid = geometry.identity_grid(shape, like=torch.zeros((), dtype=torch.float64))
    points = grid.reshape(2, -1).T + torch.tensor(origin, dtype=torch.float64)
    moved = mapping(points)  # (N, 2) source pixels
    low = torch.floor(moved.min(0).values).clamp(min=0).long()
    high = torch.ceil(moved.max(0).values).long() + 1
    high = torch.minimum(high, torch.tensor(source.shape[1:]))
    if bool((high - low < 1).any()):  # the whole tile maps outside the source
        return torch.zeros(source.shape[0], *shape)
    crop = source[:, low[0] : high[0], low[1] : high[1]].float()
    disp = (moved - low.to(moved)).T.reshape(1, 2, *shape) - grid[None]
    return geometry.warp(crop[None], disp.float())[0]


def iter_warped_bands(
    source: np.ndarray, mapping: PixelMap, target_shape: tuple[int, int], rows: int | None = None, progress: str = ""
) -> Iterator[np.ndarray]:
    """Bands of the resampled image, top to bottom: each (rows, X, C) in (row, column, sample) order, source dtype.

    Args:
        source: (Xs, Ys, C) source pixels (alpha already removed).
        mapping: target full-resolution pixels (x, y) to source pixels.
        target_shape: (X, Y) of the target grid.
        rows: rows per band (``_BAND_ROWS`` when None).
        progress: label of a progress bar over the bands (none when empty).
    """
    width, height = target_shape
    rows = rows or _BAND_ROWS
    tensor = torch.from_numpy(source).permute(2, 0, 1)  # (C, Xs, Ys) view of the source, no copy
    starts = range(0, height, rows)
    for y0 in tqdm(starts, desc=progress, unit="band", disable=None if progress else True, leave=False):
        band_rows = min(rows, height - y0)
        band = np.empty((band_rows, width, source.shape[2]), dtype=source.dtype)
        for x0 in range(0, width, _TILE_PX):
            cols = min(_TILE_PX, width - x0)
            tile = _warp_tile(tensor, mapping, (x0, y0), (cols, band_rows))
            band[:, x0 : x0 + cols] = cast_pixels(tile.permute(2, 1, 0).numpy(), source.dtype)
        yield band


def warp_array(source: np.ndarray, mapping: PixelMap, target_shape: tuple[int, int]) -> np.ndarray:
    """The resampled image in memory: (X, Y, C) of ``target_shape``, source dtype (alpha removed)."""
    colour = without_alpha(source)
    bands = list(iter_warped_bands(colour, mapping, target_shape))
    return np.transpose(np.concatenate(bands, axis=0), (1, 0, 2))
