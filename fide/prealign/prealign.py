"""Affine pre-alignment entry: keypoints + descriptors + guided mutual matching + RANSAC, seeded by the search."""

from __future__ import annotations

import logging

import torch

from fide import geometry
from fide.config import PrealignConfig
from fide.preprocess.working import WorkingPair

from .keypoints import describe, detect_keypoints, match_mutual
from .ransac import ransac_affine

__all__ = ["prealign_affine", "fixed_keypoints"]

logger = logging.getLogger(__name__)

# the code's RANSAC threshold (3.5 px) is defined at the 832 px crop; rescaled to the working grid
_REFERENCE_SIZE_PX = 832
NMS_RADIUS_PX = 3  # code: 5x5 non-maximum suppression of keypoints
SEARCH_RADIUS_PX = 12.0  # fide: matches must lie this close to the search's prediction (working pixels)
RANSAC_ITERATIONS = 1000  # code: maxIters 1000
RANSAC_THRESHOLD_PX = 3.5  # code: 3.5 px at 832^2 (scaled to the working size)
RANSAC_SEED = 0  # fide: RANSAC's samples are the same for every run and every start


def fixed_keypoints(pair: WorkingPair, cfg: PrealignConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed image's keypoints (N, 2) and descriptors (N, D), the same for every start of one pair."""
    points = detect_keypoints(pair.fixed_intensity, pair.fidelity > 0.5, cfg.num_keypoints, NMS_RADIUS_PX)
    return points, describe(pair.fixed_features, points)


def prealign_affine(
    pair: WorkingPair,
    init_affine: torch.Tensor,
    cfg: PrealignConfig,
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Refine a global-search similarity into an affine from keypoint matches.

    The moving features are pre-warped by ``init_affine`` so both keypoint sets live in the fixed frame; matches must
    be mutual nearest neighbours in descriptor space *and* lie within :data:`SEARCH_RADIUS_PX` of each other.

    Args:
        pair: features, intensities and masks at the working resolution.
        init_affine: (3, 3) full-resolution affine from the global search, fixed to moving.
        cfg: keypoint count and the inliers needed.
        fixed: :func:`fixed_keypoints` of ``pair`` (computed here when None; pass them to refine several starts).

    Returns:
        (3, 3) full-resolution affine and the inlier count; ``init_affine`` itself when inliers < ``cfg.min_inliers``.
    """
    fixed_points, fixed_desc = fixed if fixed is not None else fixed_keypoints(pair, cfg)
    working = pair.down(init_affine)[None]
    disp = geometry.affine_to_disp(working.to(pair.fixed_features), pair.shape)
    warped_features = geometry.warp(pair.moving_features, disp, padding_mode="border")
    warped_intensity = geometry.warp(pair.moving_intensity, disp)
    inside = geometry.overlap_mask(pair.moving_intensity, disp) > 0.5
    moving_points = detect_keypoints(warped_intensity, inside, cfg.num_keypoints, NMS_RADIUS_PX)
    fixed_index, moving_index = match_mutual(
        fixed_points,
        fixed_desc,
        moving_points,
        describe(warped_features, moving_points),
        SEARCH_RADIUS_PX,
    )
    threshold = RANSAC_THRESHOLD_PX * max(pair.shape) / _REFERENCE_SIZE_PX
    residual, inliers = ransac_affine(
        fixed_points[fixed_index],
        moving_points[moving_index],
        threshold_px=max(threshold, 1.0),
        iterations=RANSAC_ITERATIONS,
        seed=RANSAC_SEED,
    )
    count = int(inliers.sum())
    logger.debug("prealign: %d matches, %d inliers", len(fixed_index), count)
    if count < cfg.min_inliers:
        return init_affine, count
    total = geometry.compose_affine(working[0], residual)
    return pair.up(total), count
