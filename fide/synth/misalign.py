"""Known misalignments of synthetic pairs: a random affine plus a smooth warp, exact landmarks, dense ground truth.

Ground truth is exact by construction. The moving→fixed map ``S(q) = W(B q)`` is explicit (``B`` the inverse of the
fixed→moving affine ``A``, ``W(x) = x + w(x)`` a smooth warp given in closed form as a sum of Gaussian bumps), so:

* the moving image is made by backward warping: ``moving(q) = aligned(S(q))`` (:func:`fide.geometry.warp`);
* moving landmarks ``m`` are picked on structures of the moving image and fixed ones set to ``f = S(m)`` (no inverse);
* the fixed→moving field ``T(p) - p`` with ``T = A ∘ W⁻¹`` uses a fixed-point inverse of ``W`` that converges to
  float precision because ``|∇w| << 1``.

Points are (N, 2) float64 arrays, pixels, array order (i, j), as in :mod:`fide.geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from fide.geometry import apply_affine_to_points, warp

__all__ = ["Misalignment", "random_misalignment", "warp_to_moving", "pick_landmarks"]


@dataclass(frozen=True)
class Misalignment:
    """A fixed→moving map ``T = A ∘ W⁻¹`` and its explicit inverse ``S = W ∘ A⁻¹``.

    Attributes:
        affine: (3, 3) fixed→moving pixel affine ``A`` (``q = A [p, 1]``).
        centres: (K, 2) centres of the warp's Gaussian bumps, fixed pixels.
        amplitudes: (K, 2) bump displacements, pixels.
        sigma: bump width, pixels.
        params: the drawn parameters (rotation_deg, scale, anisotropy, shear, shift, warp_max_px).
    """

    affine: np.ndarray
    centres: np.ndarray
    amplitudes: np.ndarray
    sigma: float
    params: dict

    def smooth_disp(self, points: np.ndarray) -> np.ndarray:
        """w(x) at fixed points (N, 2): the warp's displacement, pixels."""
        out = np.zeros_like(points, dtype=np.float64)
        for centre, amplitude in zip(self.centres, self.amplitudes):  # K is small: loop, no (N, K, 2) temporaries
            sq = (points[:, 0] - centre[0]) ** 2 + (points[:, 1] - centre[1]) ** 2
            out += np.exp(sq * (-0.5 / self.sigma**2))[:, None] * amplitude
        return out

    def moving_to_fixed(self, points: np.ndarray) -> np.ndarray:
        """S(q) = W(A⁻¹ q) for moving points (N, 2); exact."""
        inverse = torch.linalg.inv(torch.from_numpy(self.affine))
        x = apply_affine_to_points(inverse, torch.from_numpy(points)).numpy()
        return x + self.smooth_disp(x)

    def _inverse_warp(self, points: np.ndarray, tol: float = 1e-9, max_iter: int = 100) -> np.ndarray:
        """W⁻¹(p) for fixed points (N, 2) by the contraction ``x <- p - w(x)`` (|∇w| ~ 0.03: ~6 steps)."""
        x = points.copy()
        for _ in range(max_iter):
            new = points - self.smooth_disp(x)
            done = np.abs(new - x).max(initial=0.0) < tol
            x = new
            if done:
                break
        return x

    def fixed_to_moving(self, points: np.ndarray) -> np.ndarray:
        """T(p) = A(W⁻¹(p)) for fixed points (N, 2), to ~1e-9 px."""
        inner = torch.from_numpy(self._inverse_warp(points))
        return apply_affine_to_points(torch.from_numpy(self.affine), inner).numpy()

    def disp_fixed_to_moving(self, shape: tuple[int, int]) -> np.ndarray:
        """Dense ground truth (2, H, W) float32, pixels, fixed→moving: ``T(p) - p`` (challenge ``disp_*``).

        W⁻¹ is iterated exactly on nodes 4 px apart and interpolated bilinearly (error ~1e-3 px); one more exact
        contraction step ``x = p - w(p + u(p))`` at every pixel shrinks that error ~30-fold, below float32
        resolution. The affine is then applied exactly.
        """
        offset = _dense(self._inverse_warp, shape)  # u(p) = W⁻¹(p) - p, approximately
        grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
        grid = grid.reshape(-1, 2)
        inner = grid - self.smooth_disp(grid + offset.reshape(2, -1).T)
        moved = apply_affine_to_points(torch.from_numpy(self.affine), torch.from_numpy(inner)).numpy()
        return (moved - grid).T.reshape(2, *shape).astype(np.float32)

    def disp_moving_to_fixed(self, shape: tuple[int, int]) -> np.ndarray:
        """Dense (2, H, W) float64 on the moving grid: ``S(q) - q``, the field that builds the moving image.

        Exact on nodes 4 px apart, bilinear between (~1e-3 px, far below what resampling an image resolves); the
        landmarks use the exact :meth:`moving_to_fixed`.
        """
        return _dense(self.moving_to_fixed, shape)

    def cropped(self, offset: float) -> Misalignment:
        """The same map between windows cut at ``offset`` pixels along both axes of both images.

        Window coordinates are ``p' = p - offset``, so ``A' = T(-offset) A T(offset)`` and the bumps move by
        ``-offset``; ``S'(q') = S(q' + offset) - offset`` exactly.
        """
        shift = np.eye(3)
        shift[:2, 2] = offset
        affine = np.linalg.inv(shift) @ self.affine @ shift
        return Misalignment(affine, self.centres - offset, self.amplitudes, self.sigma, dict(self.params))


def _dense(mapping, shape: tuple[int, int], spacing: float = 4.0) -> np.ndarray:
    """``mapping(p) - p`` (2, H, W) float64 for every pixel: exact on nodes ``spacing`` px apart, bilinear between."""
    nodes = [np.linspace(0, n - 1, max(int(np.ceil((n - 1) / spacing)) + 1, 2)) for n in shape]
    coarse = np.stack(np.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, 2)
    disp = (mapping(coarse) - coarse).T.reshape(1, 2, len(nodes[0]), len(nodes[1]))
    # align_corners=True puts node k exactly on pixel k * (n - 1) / (nodes - 1), so nodes keep their exact values
    dense = F.interpolate(torch.from_numpy(disp), size=tuple(shape), mode="bilinear", align_corners=True)
    return dense[0].numpy()


def random_misalignment(
    size: int,
    rng: np.random.Generator,
    *,
    rotation_deg: float = 180.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    shear: float = 0.08,
    anisotropy: float = 1.05,
    shift_frac: float = 0.10,
    warp_px: float = 4.0,
    mirror: bool = False,
) -> Misalignment:
    """Draw a fixed→moving affine about the image centre and a smooth warp of a few pixels.

    ``A = T(c + t) R(θ) diag(s·√a, s/√a) [[1, k], [0, 1]] T(-c)``: θ uniform in ±``rotation_deg``, s uniform in
    ``scale_range`` (moving pixels per fixed pixel), anisotropy ratio a in [1, ``anisotropy``], shear k in ±``shear``,
    shift t uniform in ±``shift_frac``·size per axis; ``mirror`` appends a left-right flip ``diag(1, -1)`` (the
    slide was mirrored, det A < 0). ``mirror`` draws no random number, so unmirrored draws are unchanged.

    Args:
        size: image side, pixels (fixed and moving grids are size × size).
        rng: random generator.
        warp_px: largest displacement of the smooth warp at 834 px; scaled by size / 834.

    Returns:
        The :class:`Misalignment`.
    """
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    theta = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg))
    scale = rng.uniform(lo, hi)
    ratio = rng.uniform(1.0, anisotropy)
    if rng.random() < 0.5:
        ratio = 1 / ratio
    k = rng.uniform(-shear, shear)
    shift = rng.uniform(-shift_frac, shift_frac, 2) * size
    centre = np.full(2, (size - 1) / 2)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    linear = rot @ np.diag([scale * np.sqrt(ratio), scale / np.sqrt(ratio)]) @ np.array([[1.0, k], [0.0, 1.0]])
    if mirror:
        linear = linear @ np.diag([1.0, -1.0])
    affine = np.eye(3)
    affine[:2, :2] = linear
    affine[:2, 2] = centre + shift - linear @ centre
    # smooth warp: a few broad bumps, rescaled so the largest displacement is warp_px (|∇w| stays ~0.03)
    n_bumps = int(rng.integers(4, 10))
    sigma = rng.uniform(0.12, 0.25) * size
    centres = rng.uniform(0, size - 1, (n_bumps, 2))
    amplitudes = rng.normal(0, 1, (n_bumps, 2))
    target = rng.uniform(0.4, 1.0) * warp_px * size / 834
    probe = Misalignment(affine, centres, amplitudes, sigma, {})
    coarse = np.stack(np.meshgrid(*[np.linspace(0, size - 1, 24)] * 2, indexing="ij"), -1).reshape(-1, 2)
    peak = np.linalg.norm(probe.smooth_disp(coarse), axis=1).max()
    amplitudes = amplitudes * target / max(peak, 1e-9)
    params = {
        "rotation_deg": float(np.rad2deg(theta)),
        "scale": float(scale),
        "anisotropy": float(ratio),
        "shear": float(k),
        "shift_px": shift.tolist(),
        "warp_max_px": float(target),
        "mirrored": bool(mirror),
    }
    return Misalignment(affine, centres, amplitudes, float(sigma), params)


def warp_to_moving(image: np.ndarray, misalignment: Misalignment, fill: float | Sequence[float] = 0.0) -> np.ndarray:
    """Backward-warp an aligned image into the moving frame: ``moving(q) = image(S(q))``, bilinear.

    Args:
        image: (C, H, W) float image on the fixed grid.
        misalignment: the map.
        fill: value outside the aligned image, one for all channels or one per channel (255 = white corners of a
            bright-field image, 0 = black).

    Returns:
        (C, H, W) float32 moving image.
    """
    channels, height, width = image.shape
    fill_values = np.broadcast_to(np.asarray(fill, np.float32), (channels,))
    disp = torch.from_numpy(misalignment.disp_moving_to_fixed((height, width))).float()[None]
    # warp the image and a coverage channel with zero padding; bilinear is linear, so image + fill * (1 - coverage)
    # equals warping (image - fill) and adding fill back
    stack = np.concatenate([np.asarray(image, np.float32), np.ones((1, height, width), np.float32)])
    warped = warp(torch.from_numpy(stack)[None], disp, mode="bilinear", padding_mode="zeros")[0].numpy()
    return warped[:-1] + fill_values[:, None, None] * (1 - warped[-1:])


def pick_landmarks(
    structure_moving: np.ndarray,
    tissue_moving: np.ndarray,
    tissue_fixed: np.ndarray,
    misalignment: Misalignment,
    rng: np.random.Generator,
    *,
    count_range: tuple[int, int] = (50, 150),
    margin: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Corresponding landmarks at distinct structures, on tissue in both images and away from the borders.

    Moving landmarks ``m`` are local maxima of the warped structure map (fibres, nuclei), spread by a minimum spacing;
    fixed landmarks are ``f = S(m)``, exact.

    Args:
        structure_moving: (H, W) salience map in the moving frame.
        tissue_moving: (H, W) tissue map in the moving frame, [0, 1].
        tissue_fixed: (H, W) tissue map in the fixed frame, [0, 1].
        misalignment: the map.
        rng: random generator.
        count_range: inclusive range of the number of landmarks drawn.
        margin: minimum distance to every image border, pixels, in both images.

    Returns:
        fixed (N, 2), moving (N, 2): float64, pixels, array order; row n corresponds to row n.
    """
    height, width = structure_moving.shape
    window = max(int(round(7 * height / 834)) | 1, 3)
    peaks = (structure_moving == ndimage.maximum_filter(structure_moving, size=window)) & (structure_moving > 0)
    cand = np.argwhere(peaks).astype(np.float64)
    cand = np.concatenate([cand, rng.uniform(0, [height - 1, width - 1], (4000, 2))])  # plain tissue as a fallback
    salience = np.concatenate([structure_moving[peaks], np.full(4000, -1.0)])
    cand = cand + rng.uniform(-0.5, 0.5, cand.shape) * (salience >= 0)[:, None]  # sub-pixel, like clicked points
    fixed = misalignment.moving_to_fixed(cand)
    upper_m, upper_f = np.array([height - 1, width - 1]) - margin, np.array(tissue_fixed.shape) - 1 - margin
    ok = np.all((cand >= margin) & (cand <= upper_m) & (fixed >= margin) & (fixed <= upper_f), axis=1)
    on_moving = ndimage.map_coordinates(tissue_moving, cand.T, order=1) > 0.9
    on_fixed = ndimage.map_coordinates(tissue_fixed, fixed.T, order=1) > 0.9
    ok &= on_moving & on_fixed
    cand, fixed, salience = cand[ok], fixed[ok], salience[ok]
    # strongest structures first, shuffled a little so the picks are not all the brightest fibres
    order = np.argsort(-(salience + rng.uniform(0, 0.3 * max(salience.max(initial=0), 1e-6), len(salience))))
    want = int(rng.integers(count_range[0], count_range[1] + 1))
    spacing = 22.0 * height / 834 + 2
    chosen: list[int] = []
    while spacing >= 0.5:
        chosen = []
        taken = np.empty((0, 2))
        for idx in order:
            if len(taken) == 0 or np.min(np.sum((taken - cand[idx]) ** 2, axis=1)) >= spacing**2:
                chosen.append(idx)
                taken = np.vstack([taken, cand[idx]])
                if len(chosen) == want:
                    break
        if len(chosen) >= count_range[0]:
            break
        spacing /= 1.5
    chosen_idx = np.array(chosen, dtype=np.int64)
    return fixed[chosen_idx], cand[chosen_idx]
