"""Learn2Reg metrics for 2D and 3D displacement fields: TRE, Jacobian determinant, SDlogJ, foldings, aggregation.

Formulas follow the official evaluator, MDL-UzL/L2R ``evaluation/utils.py`` and ``evaluation/evaluation.py``
(eval_version "2.0"). Its TRE and Jacobian index component 2, so it only scores 3D fields. The 2D functions here
use the same kernel, crop, interpolation and clip bounds on one fewer axis.

Conventions for every ``disp`` argument: channel-last, shape (*spatial, S) with S = number of spatial axes,
in voxels, nibabel array-axis order (``disp[..., k]`` moves along array axis k), direction fixed -> moving:
fixed voxel p corresponds to moving voxel p + disp(p).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "aggregate",
    "compute_tre",
    "jacobian_determinant",
    "jacobian_determinant_2d",
    "jacobian_determinant_3d",
    "num_foldings",
    "num_foldings_l2r",
    "sdlogj",
    "sdlogj_l2r",
    "worst30_quantile",
]

_CROP = 2  # voxels dropped at each border before det J is used (upstream)
_DIFF_KERNEL = np.array([-0.5, 0.0, 0.5])  # central difference, applied by correlation with zero padding (upstream)
_CLIP_MIN, _CLIP_MAX = 1e-9, 1e9  # clip bounds before the log (upstream)
_L2R_SHIFT = 3.0  # the literal "+ 3" upstream adds to det J before clipping; see sdlogj_l2r
# Quantile reported as "30": the worst 30 % of cases. Lower is better for tre/sdlogj, higher for dice/hd95 upstream.
_WORST30_QUANTILE = {"tre": 0.7, "sdlogj": 0.7, "dice": 0.3, "hd95": 0.3}


def _check_disp(disp: np.ndarray, spatial_dims: int) -> None:
    if disp.ndim != spatial_dims + 1 or disp.shape[-1] != spatial_dims:
        raise ValueError(
            f"disp: expected shape (*spatial, {spatial_dims}) with {spatial_dims} spatial axes, found {disp.shape}"
        )
    if min(disp.shape[:-1]) <= 2 * _CROP:
        raise ValueError(
            f"disp: every spatial axis must exceed {2 * _CROP} voxels (a {_CROP}-voxel border is cropped), "
            f"found {disp.shape[:-1]}"
        )


def compute_tre(
    fix_lms: np.ndarray, mov_lms: np.ndarray, disp: np.ndarray, spacing_mov: tuple[float, ...] | None = None
) -> np.ndarray:
    """Target registration error per landmark pair, in the units of ``spacing_mov``.

    TRE_n = || (f_n + u(f_n) - m_n) * s_mov ||. u(f_n) is sampled per component with
    ``scipy.ndimage.map_coordinates`` at its defaults (cubic B-spline with prefilter, mode 'constant', cval 0),
    so points beyond the outermost voxel centres get zero displacement. Source: L2R ``utils.compute_tre``; the
    fixed spacing it also receives is unused there, so it is not an argument here.

    Args:
        fix_lms: (N, S) fixed landmarks, voxel indices in array-axis order.
        mov_lms: (N, S) moving landmarks, voxel indices in array-axis order; row n matches ``fix_lms[n]``.
        disp: (*spatial, S) displacement on the fixed grid, voxels, fixed -> moving; S is 2 or 3.
        spacing_mov: S voxel sizes of the moving image (first S header zooms); None means 1 (TRE in voxels).

    Returns:
        (N,) TRE per landmark pair, in spacing units (mm, or voxels when spacing is 1).

    Raises:
        ValueError: inconsistent shapes.
    """
    disp = np.asarray(disp)
    spatial_dims = disp.ndim - 1
    if spatial_dims not in (2, 3) or disp.shape[-1] != spatial_dims:
        raise ValueError(f"disp: expected shape (H, W, 2) or (X, Y, Z, 3), found {disp.shape}")
    fix_lms, mov_lms = np.asarray(fix_lms), np.asarray(mov_lms)
    if fix_lms.ndim != 2 or fix_lms.shape[1] != spatial_dims or fix_lms.shape != mov_lms.shape:
        raise ValueError(
            f"landmarks: expected fix_lms and mov_lms of equal shape (N, {spatial_dims}), "
            f"found {fix_lms.shape} and {mov_lms.shape}"
        )
    spacing = np.ones(spatial_dims) if spacing_mov is None else np.asarray(spacing_mov)
    if spacing.shape != (spatial_dims,):
        raise ValueError(f"spacing_mov: expected {spatial_dims} values, found {spacing.shape}")
    disp_at_fix = np.stack([ndimage.map_coordinates(disp[..., k], fix_lms.T) for k in range(spatial_dims)], axis=1)
    return np.linalg.norm((fix_lms + disp_at_fix - mov_lms) * spacing, axis=1)


def _gradients(disp: np.ndarray) -> list[list[np.ndarray]]:
    """grad[a][c] = d disp_c / d x_a in float64: the layout of upstream's ``grad_disp`` (axis first)."""
    spatial_dims = disp.shape[-1]
    grads = []
    for axis in range(spatial_dims):
        kernel = _DIFF_KERNEL.reshape([3 if a == axis else 1 for a in range(spatial_dims)])
        # Upstream adds a float64 identity to the correlation output, so float32 input ends up in float64 too.
        grads.append(
            [
                ndimage.correlate(disp[..., c], kernel, mode="constant", cval=0.0).astype(np.float64)
                for c in range(spatial_dims)
            ]
        )
    return grads


def jacobian_determinant_2d(disp: np.ndarray) -> np.ndarray:
    """Determinant of J = I + grad(u) of a 2D field, with a 2-pixel border cropped.

    Central differences (kernel [-0.5, 0, 0.5], zero padding): the 2D analogue of L2R ``jacobian_determinant``.
    det = (1 + d0 u0)(1 + d1 u1) - (d0 u1)(d1 u0).

    Args:
        disp: (H, W, 2) displacement, pixels, array-axis order, fixed -> moving; H, W > 4.

    Returns:
        (H - 4, W - 4) det J, dimensionless; > 0 where the map preserves orientation, <= 0 at a fold.
    """
    disp = np.asarray(disp)
    _check_disp(disp, 2)
    g = _gradients(disp)
    c = slice(_CROP, -_CROP)
    j00, j01 = (g[0][0] + 1.0)[c, c], g[0][1][c, c]
    j10, j11 = g[1][0][c, c], (g[1][1] + 1.0)[c, c]
    return j00 * j11 - j10 * j01


def jacobian_determinant_3d(disp: np.ndarray) -> np.ndarray:
    """Determinant of J = I + grad(u) of a 3D field, with a 2-voxel border cropped, exactly as L2R computes it.

    Same kernel, padding, crop and cofactor expansion (down the first column of J[a][c] = delta + d_a u_c) as
    L2R ``utils.jacobian_determinant``, which takes (1, 3, X, Y, Z) instead of channel-last.

    Args:
        disp: (X, Y, Z, 3) displacement, voxels, array-axis order, fixed -> moving; X, Y, Z > 4.

    Returns:
        (X - 4, Y - 4, Z - 4) det J, dimensionless.
    """
    disp = np.asarray(disp)
    _check_disp(disp, 3)
    g = _gradients(disp)
    c = slice(_CROP, -_CROP)
    j = [[(g[a][b] + (1.0 if a == b else 0.0))[c, c, c] for b in range(3)] for a in range(3)]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[1][0] * (j[0][1] * j[2][2] - j[0][2] * j[2][1])
        + j[2][0] * (j[0][1] * j[1][2] - j[0][2] * j[1][1])
    )


def jacobian_determinant(disp: np.ndarray) -> np.ndarray:
    """Dispatch on the component count: (H, W, 2) -> :func:`jacobian_determinant_2d`, (X, Y, Z, 3) -> 3d."""
    disp = np.asarray(disp)
    if disp.ndim == 3 and disp.shape[-1] == 2:
        return jacobian_determinant_2d(disp)
    if disp.ndim == 4 and disp.shape[-1] == 3:
        return jacobian_determinant_3d(disp)
    raise ValueError(f"disp: expected shape (H, W, 2) or (X, Y, Z, 3), found {disp.shape}")


def _masked_std(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(values.std())
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != values.shape:
        raise ValueError(f"mask: expected the cropped det J shape {values.shape}, found {mask.shape}")
    if not mask.any():
        return float("nan")
    # np.ma as upstream (MaskedArray(log_jac_det, 1 - mask).std()): std with ddof = 0 over the kept voxels.
    return float(np.ma.MaskedArray(values, mask=~mask).std())


def sdlogj(jac_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Textbook SDlogJ: std(log det J), ddof = 0; lower is smoother, 0 for any affine map.

    Non-positive determinants (folds) are clipped to 1e-9 (upstream's lower clip bound) before the log, so each
    fold contributes log(1e-9) ~ -20.7 and inflates the value instead of making it NaN.

    Args:
        jac_det: det J from :func:`jacobian_determinant` (border already cropped).
        mask: optional boolean array of ``jac_det``'s shape; True = voxel counted.

    Returns:
        The standard deviation, dimensionless; NaN if the mask keeps no voxel.
    """
    return _masked_std(np.log(np.clip(jac_det, _CLIP_MIN, _CLIP_MAX)), mask)


def sdlogj_l2r(jac_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Upstream-compatible SDlogJ: std(log(clip(det J + 3, 1e-9, 1e9))), ddof = 0.

    The literal "+ 3" of L2R ``evaluation.py`` is reproduced so that scores match the official leaderboards. It
    is not the textbook metric: near det J = 1, d log(det + 3) = d det / 4, so values are about 4x smaller than
    :func:`sdlogj`, and a fold with -3 < det J <= 0 is not singled out (log(det J + 3) stays finite and
    moderate). Affine maps still give 0.

    Args:
        jac_det: det J from :func:`jacobian_determinant` (border already cropped).
        mask: optional boolean array of ``jac_det``'s shape; True = voxel counted.
    """
    return _masked_std(np.log(np.clip(jac_det + _L2R_SHIFT, _CLIP_MIN, _CLIP_MAX)), mask)


def num_foldings(jac_det: np.ndarray) -> int:
    """Number of folded voxels, det J <= 0, on the cropped region (unmasked, as upstream)."""
    return int(np.count_nonzero(np.asarray(jac_det) <= 0))


def num_foldings_l2r(jac_det: np.ndarray) -> int:
    """Upstream-compatible folding count: voxels with clip(det J + 3, 1e-9, 1e9) <= 0.

    L2R counts on the shifted, clipped array, whose values are all >= 1e-9, so this is always 0. It is kept only
    so that reports can be compared with official ones; use :func:`num_foldings` for the real count.
    """
    return int(np.count_nonzero(np.clip(np.asarray(jac_det) + _L2R_SHIFT, _CLIP_MIN, _CLIP_MAX) <= 0))


def worst30_quantile(metric: str) -> float:
    """Quantile stored as aggregate "30" for an upstream metric type: 0.7 for tre/sdlogj, 0.3 for dice/hd95."""
    if metric not in _WORST30_QUANTILE:
        raise ValueError(f"metric: expected one of {sorted(_WORST30_QUANTILE)}, found {metric!r}")
    return _WORST30_QUANTILE[metric]


def aggregate(case_values: np.ndarray | list[float], metric: str) -> dict[str, float]:
    """Aggregate per-case values as L2R does: mean, std (ddof = 0) and "30" (worst-30 % quantile).

    NaN case values propagate to NaN aggregates, as upstream.

    Args:
        case_values: (C,) one value per case (each case's "mean").
        metric: upstream metric type of the values, one of "tre", "sdlogj", "dice", "hd95".

    Returns:
        {"mean": ..., "std": ..., "30": ...} as Python floats.
    """
    values = np.asarray(case_values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"case_values: expected a non-empty 1D sequence, found shape {values.shape}")
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "30": float(np.quantile(values, worst30_quantile(metric))),
    }
