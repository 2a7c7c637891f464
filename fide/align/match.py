"""Patch matching between the fixed and the moving full-resolution image at one level of the refinement ladder.

At a level of ``factor`` fixed pixels per level pixel, patches of ``PATCH_PX`` level pixels with structure are cut
from both images (only their windows are read: :class:`WindowReader`), the moving one through the current map with
a margin; each patch's shift is the sub-pixel peak of the normalised cross-correlation of modality-robust channels
(log-SHG against eosin, as the engine's search). The shifted patch centres are the correspondences that
:mod:`fide.align.refine` fits. Memory: one patch at a time. Points are (x, y) full-resolution pixels, fixed to
moving, as in :mod:`fide.align.source`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fide import geometry
from fide.features.cooccurrence import parabolic_vertex
from fide.io.microscopy import WindowReader
from fide.preprocess.intensity import optical_density, stain_channels

from .resample import PixelMap
from .source import ImageSource

__all__ = ["PATCH_PX", "Patches", "match_level", "patch_centres", "structure_map"]

PATCH_PX = 128  # patch side at each level, level pixels
_PATCHES = 64  # patches per level (cells of an 8 x 8 lattice, the most structured candidate in each)
_MIN_NCC = 0.1  # a correlation peak below this matches nothing
_MIN_SHARPNESS = 0.02  # peak minus the best correlation half the margin away: flat or repetitive patches are out


def _channel(pixels: np.ndarray, partner_channels: int) -> torch.Tensor:
    """(X, Y, C) pixels → (X, Y) float32 modality-robust channel: log-SHG; eosin against SHG; mean optical density
    against RGB (:func:`fide.preprocess.prepare.prepare_image`'s choice; NCC needs no normalisation)."""
    values = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    if values.shape[2] in (2, 4):  # alpha is not signal
        values = values[..., :-1]
    if values.shape[2] == 1:
        return torch.log1p(values[..., 0].clamp(min=0))
    rgb = values.permute(2, 0, 1)[None]
    scale = 255.0 / float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
    rgb = rgb * scale
    channel = stain_channels(rgb)[:, 1] if partner_channels == 1 else optical_density(rgb).mean(1)
    return channel[0]


def _block_mean(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks of an (X, Y, C) array (cropped to whole blocks), float32."""
    if factor == 1:
        return pixels.astype(np.float32)
    nx, ny = pixels.shape[0] // factor, pixels.shape[1] // factor
    blocks = pixels[: nx * factor, : ny * factor].astype(np.float32)
    return blocks.reshape(nx, factor, ny, factor, -1).mean((1, 3))


def structure_map(working: torch.Tensor, footprint: int) -> torch.Tensor:
    """(X, Y) standard deviation of the working fixed image's log intensity over ``footprint``-pixel windows."""
    image = torch.log1p(working.double().mean(0).clamp(min=0))
    half = max(1, footprint // 2)

    def box_mean(values: torch.Tensor) -> torch.Tensor:  # integral image: any window size at one cost
        table = F.pad(values, (1, 0, 1, 0)).cumsum(0).cumsum(1)
        width, height = values.shape
        lo_x, hi_x = (torch.arange(width) - half).clamp(0, width), (torch.arange(width) + half + 1).clamp(0, width)
        lo_y, hi_y = (torch.arange(height) - half).clamp(0, height), (torch.arange(height) + half + 1).clamp(0, height)
        total = table[hi_x][:, hi_y] - table[lo_x][:, hi_y] - table[hi_x][:, lo_y] + table[lo_x][:, lo_y]
        return total / ((hi_x - lo_x)[:, None] * (hi_y - lo_y)[None, :])

    mean = box_mean(image)
    return (box_mean(image**2) - mean**2).clamp(min=0).sqrt().float()


def patch_centres(structure: torch.Tensor, to_working: torch.Tensor, shape, half: float, rng) -> torch.Tensor:
    """(K, 2) patch centres, fixed full-resolution pixels: in each cell of a lattice, the most structured of a
    few random candidates whose whole patch lies in the image; cells without structure give none."""
    cells = int(round(math.sqrt(_PATCHES)))
    width, height = shape
    picked, scores = [], []
    for i in range(cells):
        for j in range(cells):
            low = np.array([max(half, i * width / cells), max(half, j * height / cells)])
            high = np.array(
                [min(width - 1 - half, (i + 1) * width / cells), min(height - 1 - half, (j + 1) * height / cells)]
            )
            if (high <= low).any():
                continue
            candidates = torch.from_numpy(rng.uniform(low, high, (16, 2)))
            at = geometry.apply_affine_to_points(to_working, candidates).round().long()
            at[:, 0] = at[:, 0].clamp(0, structure.shape[0] - 1)
            at[:, 1] = at[:, 1].clamp(0, structure.shape[1] - 1)
            values = structure[at[:, 0], at[:, 1]]
            best = int(values.argmax())
            picked.append(candidates[best])
            scores.append(float(values[best]))
    if not picked:
        return torch.zeros(0, 2, dtype=torch.float64)
    scores_ = np.asarray(scores)
    keep = scores_ >= 0.25 * np.median(scores_[scores_ > 0]) if (scores_ > 0).any() else scores_ > 0
    return torch.stack(picked)[torch.from_numpy(keep)]


def _ncc_surface(template: torch.Tensor, search: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of a (P, P) template at every shift inside a (P + 2M, P + 2M) search image:
    (2M + 1, 2M + 1), [-1, 1], higher is better; index M + s is the template moved by s pixels."""
    size = template.shape[0]
    template = template - template.mean()
    norm = template.norm().clamp(min=1e-8)
    spectrum = torch.fft.rfft2(search.double()) * torch.conj(torch.fft.rfft2(template.double(), s=search.shape))
    corr = torch.fft.irfft2(spectrum, s=search.shape)
    shifts = search.shape[0] - size + 1
    corr = corr[:shifts, :shifts]
    integral = F.pad(search.double(), (1, 0, 1, 0)).cumsum(0).cumsum(1)
    squares = F.pad(search.double() ** 2, (1, 0, 1, 0)).cumsum(0).cumsum(1)

    def window(table: torch.Tensor) -> torch.Tensor:
        return table[size:, size:] - table[:-size, size:] - table[size:, :-size] + table[:-size, :-size]

    local = (window(squares) - window(integral) ** 2 / size**2).clamp(min=0).sqrt()
    return (corr / (local * norm).clamp(min=1e-8)).float()


def _peak(surface: torch.Tensor, away_px: int) -> tuple[np.ndarray, float, float] | None:
    """Sub-pixel (x, y) shift of the correlation peak (parabolic per axis), the peak and its sharpness; None when
    the peak lies on the search border (the match is further than the margin)."""
    n = surface.shape[0]
    flat = int(surface.argmax())
    i, j = divmod(flat, n)
    if not (0 < i < n - 1 and 0 < j < n - 1):
        return None
    peak = float(surface[i, j])
    away = surface.clone()
    away[max(0, i - away_px) : i + away_px + 1, max(0, j - away_px) : j + away_px + 1] = -1.0
    sharpness = peak - float(away.max())

    centre = n // 2
    di = parabolic_vertex(float(surface[i - 1, j]), peak, float(surface[i + 1, j]))
    dj = parabolic_vertex(float(surface[i, j - 1]), peak, float(surface[i, j + 1]))
    return np.array([i + di - centre, j + dj - centre]), peak, sharpness


class Patches:
    """Cuts level-resolution patches: the fixed one by block means, the moving one through a map."""

    def __init__(self, fixed: ImageSource, moving: ImageSource) -> None:
        self.fixed_reader = WindowReader(fixed.info, fixed.array)
        self.moving_reader = WindowReader(moving.info, moving.array)
        self.fixed_channels, self.moving_channels = fixed.info.channels, moving.info.channels

    def close(self) -> None:
        self.fixed_reader.close()
        self.moving_reader.close()

    def fixed(self, centre: torch.Tensor, factor: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(size, size) fixed channel around ``centre`` and the (x, y) fixed pixel of its first sample."""
        x0, y0 = (int(round(float(c) - factor * size / 2)) for c in centre)
        pixels = self.fixed_reader(x0, x0 + factor * size, y0, y0 + factor * size)
        channel = _channel(_block_mean(pixels, factor), self.moving_channels)
        return channel, torch.tensor([x0 + (factor - 1) / 2, y0 + (factor - 1) / 2], dtype=torch.float64)

    def moving(self, mapping: PixelMap, first: torch.Tensor, factor: int, size: int, scale: float) -> torch.Tensor:
        """(size, size) moving channel sampled where ``mapping`` sends the fixed level grid starting at ``first``."""
        grid = geometry.identity_grid((size, size), like=torch.zeros((), dtype=torch.float64))
        points = grid.reshape(2, -1).T * factor + first
        mapped = mapping(points)  # (N, 2) moving full-resolution pixels
        block = max(1, int(round(factor * scale)))
        low = torch.floor(mapped.min(0).values).long() - block
        high = torch.ceil(mapped.max(0).values).long() + 2 * block
        pixels = self.moving_reader(int(low[0]), int(high[0]), int(low[1]), int(high[1]))
        if min(pixels.shape[:2]) < block + 1:
            return torch.zeros(size, size)
        start = torch.clamp(low, min=0).to(torch.float64)
        channel = _channel(_block_mean(pixels, block), self.fixed_channels)
        index = (mapped - start - (block - 1) / 2) / block  # block-grid coordinates
        values = geometry.sample_at(channel[None, None], index.float(), padding_mode="zeros")
        return values[:, 0].reshape(size, size)


def match_level(patches: Patches, centres, mapping: PixelMap, factor: int, margin: int, scale: float):
    """Correspondences at one level.

    Args:
        patches: the two images' patch cutter.
        centres: (K, 2) fixed patch centres, full-resolution pixels (:func:`patch_centres`).
        mapping: the current fixed → moving map; the moving patch is sampled through it.
        factor: fixed full-resolution pixels per level pixel.
        margin: search radius, level pixels.
        scale: moving pixels per fixed pixel (the moving patch's block size).

    Returns:
        (N, 2) fixed patch centres, (N, 2) moving points they match (full-resolution pixels) and (N,) weights
        (peak NCC, lowered for blunt peaks); N <= K: patches without structure or a clear peak give none.
    """
    sources, targets, weights = [], [], []
    for centre in centres:
        template, first = patches.fixed(centre, factor, PATCH_PX)
        if template.shape != (PATCH_PX, PATCH_PX) or float(template.std()) < 1e-6:
            continue
        search = patches.moving(mapping, first - factor * margin, factor, PATCH_PX + 2 * margin, scale)
        if float(search.std()) < 1e-6:
            continue
        found = _peak(_ncc_surface(template, search), max(3, margin // 2))
        if found is None or found[1] < _MIN_NCC or found[2] < _MIN_SHARPNESS:
            continue
        shift, peak, sharpness = found
        middle = first + factor * (PATCH_PX - 1) / 2
        sources.append(middle)
        targets.append(mapping((middle + factor * torch.from_numpy(shift))[None])[0])
        weights.append(peak * min(1.0, sharpness / 0.1))
    if not sources:
        empty = torch.zeros(0, 2, dtype=torch.float64)
        return empty, empty, torch.zeros(0, dtype=torch.float64)
    return torch.stack(sources), torch.stack(targets), torch.tensor(weights, dtype=torch.float64)
