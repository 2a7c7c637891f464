"""Coarse-to-fine refinement of a working-size registration up to full-resolution pixels: :func:`refine`.

At each level of a resolution ladder (powers of two from the working size's pixel down to the full-resolution
pixel), patches are matched between the two images (:mod:`fide.align.match`: patch centres moved by the sub-pixel
NCC peak). An affine is fitted to these correspondences robustly (Tukey-weighted least squares) and a smooth local
residual as a regularised thin-plate spline, sampled on a coarse grid (the map is ``A (p + u(p))``, ITK's
``[affine, displacement field]``); each accepted level starts the next. Points are (x, y) full-resolution pixels,
fixed to moving, as in :mod:`fide.align.source`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from fide import geometry

from .match import PATCH_PX, Patches, match_level, patch_centres, structure_map
from .resample import PixelMap
from .source import ImageSource

__all__ = ["Refinement", "refine", "ladder"]

logger = logging.getLogger(__name__)

_FIRST_MARGIN_PX = 16  # search radius at the first level: the working size's error plus the local warp
_MARGIN_PX = 8  # later levels start within ~1 pixel of the previous level
_MIN_INLIERS = 12  # matches that must agree with the fitted map, per level
_MIN_INLIER_FRACTION = 0.4  # of the matches found at a level
_MAX_MOVE_WORKING_PX = 8.0  # the refined map stays within this many working pixels of the working-size map
_GRID_NODES = 33  # nodes per side of the local correction's grid (bilinear between them, as ITK)
# thin-plate regularisation, image side = 1 (synthetic 4096 px pair: 0.05 / 0.005 / 0.0005 gave 2.4 / 1.2 / 1.5 px)
_TPS_SMOOTHING = 0.005
# the matches' precision (their weights' unit) is measured in pixels of an image of this side, the size the
# smoothing was calibrated at: in pixels of the image itself, an image k times larger was smoothed k² times more
_PRECISION_SIDE_PX = 4096
# passes at the first level before the ladder, their matches then dropped: measured through an affine, a patch
# averages the local warp inside it (synthetic 8192 / 4096 px pairs: 2.5 / 1.15 px without, 1.8 / 0.95 px with one)
_TRACKING_PASSES = 1
_TUKEY = 4.685  # Tukey biweight constant (95 % efficiency under Gaussian noise)


@dataclass
class Refinement:
    """What :func:`refine` found.

    Attributes:
        affine: (3, 3) float64 fixed → moving affine, full-resolution pixels, (x, y).
        field: (1, 2, G, G) local correction u at the grid nodes, fixed full-resolution pixels, applied before the
            affine (``q = A (p + u(p))``), or None (affine only).
        spacing: (x, y) fixed pixels between grid nodes.
        kept: whether the refinement replaces the working-size map.
        reason: one line on what was kept and why.
        levels: per level run (the tracking pass first): factor (fixed pixels per level pixel), patches, matches,
            inliers, inlier RMS (fixed pixels), accepted.
    """

    affine: np.ndarray
    field: torch.Tensor | None
    spacing: tuple[float, float]
    kept: bool
    reason: str
    levels: list[dict] = field(default_factory=list)

    def pixel_map(self, local: bool = True) -> PixelMap:
        """Fixed → moving full-resolution pixels: ``A (p + u(p))`` (``local``) or ``A p``."""
        affine = torch.as_tensor(self.affine, dtype=torch.float64)
        if self.field is None or not local:
            return PixelMap(affine)
        to_grid = torch.diag(torch.tensor([1 / self.spacing[0], 1 / self.spacing[1], 1.0], dtype=torch.float64))
        scale = torch.tensor([1 / self.spacing[0], 1 / self.spacing[1]], dtype=torch.float64).view(1, 2, 1, 1)
        return PixelMap(to_grid, self.field.to(torch.float64) * scale, affine @ torch.linalg.inv(to_grid))


def ladder(fixed_shape: tuple[int, int], working_factor: float) -> list[int]:
    """Level factors (fixed full-resolution pixels per level pixel), coarse to fine: powers of two from the largest
    not above ``working_factor`` down to 1, those whose patches fit the image twice over; empty when the working
    size is already (nearly) full resolution."""
    if working_factor < 1.5:
        return []
    top = int(math.floor(math.log2(working_factor)))
    fits = min(fixed_shape) / (2 * (PATCH_PX + 2 * _FIRST_MARGIN_PX))  # a lattice of patches fits at this factor
    return [2**k for k in range(top, -1, -1) if 2**k <= fits]


def _tps_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    distance = torch.cdist(a, b).clamp(min=1e-12)
    return distance**2 * torch.log(distance)


def _tps(points: torch.Tensor, values: torch.Tensor, weights: torch.Tensor, nodes: torch.Tensor, side: float):
    """Regularised thin-plate spline through (N, 2) ``values`` at (N, 2) ``points`` (weights: confidence),
    evaluated at (M, 2) ``nodes``; coordinates scaled by ``side`` so the smoothing is resolution-invariant."""
    p, q = points / side, nodes / side
    n = p.shape[0]
    kernel = _tps_kernel(p, p) + torch.diag(_TPS_SMOOTHING / weights.clamp(min=1e-6))
    poly = torch.cat([torch.ones(n, 1, dtype=p.dtype), p], 1)
    system = torch.zeros(n + 3, n + 3, dtype=p.dtype)
    system[:n, :n], system[:n, n:], system[n:, :n] = kernel, poly, poly.T
    rhs = torch.cat([values, torch.zeros(3, 2, dtype=p.dtype)])
    solution = torch.linalg.solve(system, rhs)
    basis = torch.cat([_tps_kernel(q, p), torch.ones(q.shape[0], 1, dtype=p.dtype), q], 1)
    return basis @ solution


def _fit_affine(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares (3, 3) affine taking (N, 2) ``source`` to ``target``."""
    design = torch.cat([source, torch.ones(source.shape[0], 1, dtype=source.dtype)], 1) * weights.sqrt()[:, None]
    solution = torch.linalg.lstsq(design, target * weights.sqrt()[:, None]).solution  # (3, 2)
    affine = torch.eye(3, dtype=source.dtype)
    affine[:2] = solution.T
    return affine


def _precision_weights(weights: torch.Tensor, rms: float, shape: tuple[int, int]) -> torch.Tensor:
    """(N,) weights of a level's matches divided by the level's variance (its inlier RMS, fixed pixels, at least
    half a pixel), measured in pixels of a ``_PRECISION_SIDE_PX`` image: the same matches on an image k times
    larger, with k times the RMS, get the same weights, so the thin-plate smoothing does not depend on the size."""
    precision = max(rms, 0.5) * _PRECISION_SIDE_PX / max(shape)
    return weights / precision**2


def _robust_fit(centres, targets, weights, shape, factor):
    """Affine and local correction fitted to correspondences with Tukey reweighting.

    Returns:
        (affine (3, 3), field on the node grid (1, 2, G, G) fixed pixels, inlier mask (N,), inlier RMS).
    """
    width, height = shape
    nodes_1d = [torch.linspace(0, n - 1, _GRID_NODES, dtype=torch.float64) for n in (width, height)]
    nodes = torch.stack(torch.meshgrid(*nodes_1d, indexing="ij"), -1).reshape(-1, 2)
    robust = weights.clone()
    floor = 0.5 * factor  # half a level pixel: the matches' own precision (factor 1 for matches of every level)
    affine, residual_field = None, torch.zeros(nodes.shape[0], 2, dtype=torch.float64)
    for _ in range(6):
        keep = robust > 0
        if int(keep.sum()) < max(6, _MIN_INLIERS // 2):
            break
        affine = _fit_affine(centres[keep], targets[keep], robust[keep])
        before = geometry.apply_affine_to_points(torch.linalg.inv(affine), targets) - centres  # u at the centres
        u_nodes = _tps(centres[keep], before[keep], robust[keep], nodes, float(max(width, height)))
        grid = u_nodes.T.reshape(1, 2, _GRID_NODES, _GRID_NODES)
        on_grid = centres / torch.tensor([(width - 1) / (_GRID_NODES - 1), (height - 1) / (_GRID_NODES - 1)])
        u_centres = geometry.sample_at(grid, on_grid)
        error = (before - u_centres).norm(dim=1)
        scale = max(floor, 1.4826 * float(error[keep].median()))
        robust = weights * ((1 - (error / (_TUKEY * scale)) ** 2).clamp(min=0) ** 2)
        residual_field = u_nodes
    if affine is None:
        return None, None, torch.zeros_like(weights, dtype=torch.bool), float("inf")
    inliers = robust > 0
    rms = float(error[inliers].pow(2).mean().sqrt()) if inliers.any() else float("inf")
    return affine, residual_field.T.reshape(1, 2, _GRID_NODES, _GRID_NODES), inliers, rms


def refine(
    fixed: ImageSource,
    moving: ImageSource,
    affine: np.ndarray,
    working_fixed: torch.Tensor,
    to_working: torch.Tensor,
    *,
    seed: int = 0,
) -> Refinement:
    """Refine a fixed → moving full-resolution affine through the resolution ladder up to full resolution.

    Args:
        fixed, moving: the two images (read window by window).
        affine: (3, 3) working-size result, full-resolution pixels, (x, y), fixed → moving.
        working_fixed: (C, X, Y) the fixed image at working resolution (where patches find structure).
        to_working: (3, 3) fixed full-resolution pixels → working pixels.
        seed: the patches' random candidates follow it.

    Returns:
        A :class:`Refinement`; ``kept`` False (with the working-size affine and the reason) where too few matches
        agree at the first level, or the refined map strays beyond ``_MAX_MOVE_WORKING_PX`` from the working one.
    """
    start_affine = torch.as_tensor(affine, dtype=torch.float64)
    working_factor = float(1 / torch.linalg.det(to_working[:2, :2]).abs().sqrt())
    factors = ladder(fixed.shape, working_factor)
    unchanged = Refinement(np.asarray(affine, np.float64), None, (1.0, 1.0), False, "")
    if not factors:
        unchanged.reason = "not refined: the fixed image is (nearly) at the working size, or too small for patches"
        return unchanged
    scale = float(torch.linalg.det(start_affine[:2, :2]).abs().sqrt())  # moving pixels per fixed pixel
    rng = np.random.default_rng(seed)
    patches = Patches(fixed, moving)
    mapping, current, levels, gathered = PixelMap(start_affine), None, [], []
    try:
        sequence = [factors[0]] * _TRACKING_PASSES + factors
        for k, factor in enumerate(sequence):
            if k == _TRACKING_PASSES:  # the map now follows the local warp: patches measure what is left
                gathered = []
            half = factor * (PATCH_PX / 2 + (_FIRST_MARGIN_PX if k == 0 else _MARGIN_PX)) + 1
            footprint = max(3, int(round(factor * PATCH_PX / working_factor)))
            centres = patch_centres(structure_map(working_fixed, footprint), to_working, fixed.shape, half, rng)
            margin = _FIRST_MARGIN_PX if k == 0 else _MARGIN_PX
            sources, targets, weights = match_level(patches, centres, mapping, factor, margin, scale)
            fit_affine, grid, inliers, rms = (None, None, torch.zeros(0, dtype=torch.bool), float("inf"))
            if len(weights) >= _MIN_INLIERS:
                fit_affine, grid, inliers, rms = _robust_fit(sources, targets, weights, fixed.shape, factor)
            count = int(inliers.sum())
            if fit_affine is not None and count >= max(_MIN_INLIERS, _MIN_INLIER_FRACTION * len(weights)):
                # every accepted level's matches, each weighted by its own precision: fine levels, whose texture
                # may differ between the modalities, add what they agree on without outvoting the coarse ones
                gathered.append((sources, targets, _precision_weights(weights, rms, fixed.shape)))
                fit_affine, grid, _, _ = _robust_fit(*(torch.cat(parts) for parts in zip(*gathered)), fixed.shape, 1)
            levels.append({"factor": factor, "patches": len(centres), "matches": len(weights), "inliers": count})
            levels[-1]["rms_px"] = round(rms, 3) if math.isfinite(rms) else None
            logger.info(
                "refine x%d: %d patches, %d matches, %d agree (RMS %.2f px)",
                factor,
                len(centres),
                len(weights),
                count,
                rms,
            )
            if fit_affine is None or count < max(_MIN_INLIERS, _MIN_INLIER_FRACTION * len(weights)):
                levels[-1]["accepted"] = False
                break
            levels[-1]["accepted"] = True
            spacing = tuple((n - 1) / (_GRID_NODES - 1) for n in fixed.shape)
            current = Refinement(fit_affine.numpy(), grid.float(), spacing, True, "", levels)
            mapping = current.pixel_map(local=True)
    finally:
        patches.close()
    unchanged.levels = levels
    if current is None:
        first = levels[0]
        unchanged.reason = (
            f"not refined: too few patches agree at x{factors[0]} ({first['inliers']} of {first['matches']})"
        )
        return unchanged
    move = _largest_move(PixelMap(start_affine), mapping, fixed.shape) / working_factor
    if move > _MAX_MOVE_WORKING_PX:
        unchanged.reason = f"not refined: the refined map moves {move:.1f} working px from the working-size one"
        return unchanged
    finest = levels[-1] if levels[-1]["accepted"] else levels[-2]
    current.reason = f"refined to x{finest['factor']} ({finest['inliers']} patches agree, RMS {finest['rms_px']} px)"
    return current


def _largest_move(before: PixelMap, after: PixelMap, shape: tuple[int, int]) -> float:
    """Largest distance, fixed full-resolution pixels (through the inverse affine scale), between where two maps
    send a 17 x 17 lattice over the fixed image."""
    lattice = [torch.linspace(0, n - 1, 17, dtype=torch.float64) for n in shape]
    points = torch.stack(torch.meshgrid(*lattice, indexing="ij"), -1).reshape(-1, 2)
    affine = before.affine
    back = torch.linalg.inv(affine)
    return float((geometry.apply_affine_to_points(back, after(points)) - points).norm(dim=1).max())
