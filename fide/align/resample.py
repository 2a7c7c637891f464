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
from fide.warp_points import invert_points

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

    def invert(self, points: torch.Tensor) -> torch.Tensor:
        """(N, 2) target points, pixels, (x, y) → the (N, 2) source points that map onto them, float64.

        Exact for an affine; with a field, ``g + u(g) = post^-1(q)`` is solved per point by fixed-point iteration
        (:func:`fide.warp_points.invert_points`, to 1e-6 px of the field's grid), then ``p = pre^-1(g)``.
        """
        points = points.to(torch.float64)
        if self.field is None:
            return geometry.apply_affine_to_points(torch.linalg.inv(self.post @ self.pre), points)
        on_grid = geometry.apply_affine_to_points(torch.linalg.inv(self.post), points)
        solved = invert_points(on_grid, self.field.to(torch.float64))
        return geometry.apply_affine_to_points(torch.linalg.inv(self.pre), solved)

    def inverse(self, target_shape: tuple[int, int]) -> PixelMap:
        """The map back, target full-resolution pixels → source ones, for resampling onto the source grid.

        Exact for an affine. With a field, the inverse displacement is solved once on a grid of the field's spacing
        covering the target image (``target_shape``, (X, Y)) and interpolated bilinearly in between; points are
        better served by :meth:`invert`, which solves each one.
        """
        if self.field is None:
            return PixelMap(torch.linalg.inv(self.post @ self.pre))
        back = torch.linalg.inv(self.post)
        width, height = target_shape
        corners = torch.tensor([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], dtype=torch.float64)
        on_grid = geometry.apply_affine_to_points(back, corners)
        low = torch.floor(on_grid.min(0).values) - 1
        shape = tuple(int(n) for n in torch.ceil(on_grid.max(0).values) + 2 - low)
        grid = geometry.identity_grid(shape, like=torch.zeros((), dtype=torch.float64)).reshape(2, -1).T + low
        solved = invert_points(grid, self.field.to(torch.float64))
        field_ = (solved - grid).T.reshape(1, 2, *shape)
        shift = torch.eye(3, dtype=torch.float64)
        shift[:2, 2] = low
        return PixelMap(torch.linalg.inv(shift) @ back, field_, torch.linalg.inv(self.pre) @ shift)


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


def _nearest_tile(source: np.ndarray, mapping: PixelMap, origin: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """The source pixel nearest to where each target pixel ``origin + [0, shape)`` maps: (*shape, C), source dtype,
    0 outside. Values are copied, never converted: labels and masks of any integer type keep every value."""
    grid = geometry.identity_grid(shape, like=torch.zeros((), dtype=torch.float64))
    points = grid.reshape(2, -1).T + torch.tensor(origin, dtype=torch.float64)
    index = torch.round(mapping(points)).numpy()  # (N, 2) nearest source pixel centres (x, y)
    inside = (index >= 0).all(1) & (index[:, 0] <= source.shape[0] - 1) & (index[:, 1] <= source.shape[1] - 1)
    out = np.zeros((index.shape[0], source.shape[2]), source.dtype)
    picked = index[inside].astype(np.int64)
    out[inside] = source[picked[:, 0], picked[:, 1]]
    return out.reshape(*shape, source.shape[2])


def iter_warped_bands(
    source: np.ndarray,
    mapping: PixelMap,
    target_shape: tuple[int, int],
    rows: int | None = None,
    progress: str = "",
    *,
    labels: bool = False,
) -> Iterator[np.ndarray]:
    """Bands of the resampled image, top to bottom: each (rows, X, C) in (row, column, sample) order, source dtype.

    Args:
        source: (Xs, Ys, C) source pixels (alpha already removed).
        mapping: target full-resolution pixels (x, y) to source pixels.
        target_shape: (X, Y) of the target grid.
        rows: rows per band (``_BAND_ROWS`` when None).
        progress: label of a progress bar over the bands (none when empty).
        labels: nearest neighbour (label and mask images: values copied, dtype kept) instead of bilinear.
    """
    width, height = target_shape
    rows = rows or _BAND_ROWS
    tensor = None if labels else torch.from_numpy(source).permute(2, 0, 1)  # (C, Xs, Ys) view, no copy
    starts = range(0, height, rows)
    for y0 in tqdm(starts, desc=progress, unit="band", disable=None if progress else True, leave=False):
        band_rows = min(rows, height - y0)
        band = np.empty((band_rows, width, source.shape[2]), dtype=source.dtype)
        for x0 in range(0, width, _TILE_PX):
            cols = min(_TILE_PX, width - x0)
            if labels:
                band[:, x0 : x0 + cols] = _nearest_tile(source, mapping, (x0, y0), (cols, band_rows)).transpose(1, 0, 2)
                continue
            tile = _warp_tile(tensor, mapping, (x0, y0), (cols, band_rows))
            band[:, x0 : x0 + cols] = cast_pixels(tile.permute(2, 1, 0).numpy(), source.dtype)
        yield band


def warp_array(
    source: np.ndarray, mapping: PixelMap, target_shape: tuple[int, int], *, labels: bool = False
) -> np.ndarray:
    """The resampled image in memory: (X, Y, C) of ``target_shape``, source dtype (alpha removed unless
    ``labels``: nearest neighbour, every channel kept)."""
    colour = source if labels else without_alpha(source)
    bands = list(iter_warped_bands(colour, mapping, target_shape, labels=labels))
    return np.transpose(np.concatenate(bands, axis=0), (1, 0, 2))
