"""Affine pre-alignment entry: keypoints + descriptors + guided mutual matching + RANSAC, seeded by the search."""

from __future__ import annotations

import logging

import torch

from fide import geometry
from fide.config import PrealignConfig
from fide.optimise.instance import WorkingPair

from .keypoints import describe, detect_keypoints, match_mutual
from .ransac import ransac_affine

__all__ = ["prealign_affine", "fixed_keypoints"]

logger = logging.getLogger(__name__)

# the code's RANSAC threshold (3.5 px) is defined at the 832 px crop; rescaled to the working grid
_REFERENCE_SIZE_PX = 832


def fixed_keypoints(pair: WorkingPair, cfg: PrealignConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed image's keypoints (N, 2) and descriptors (N, D), the same for every start of one pair."""
    points = detect_keypoints(pair.fixed_intensity, pair.fidelity > 0.5, cfg.num_keypoints, cfg.nms_radius_px)
    return points, describe(pair.fixed_features, points)


def prealign_affine(
    pair: WorkingPair,
    init_affine: torch.Tensor,
    cfg: PrealignConfig,
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """Refine a global-search similarity into an affine from keypoint matches.

    The moving features are pre-warped by ``init_affine`` so both keypoint sets live in the fixed frame; matches must
    be mutual nearest neighbours in descriptor space *and* lie within ``cfg.search_radius_px`` of each other.

    Args:
        pair: features, intensities and masks at the working resolution.
        init_affine: (3, 3) full-resolution affine from the global search, fixed to moving.
        cfg: keypoint, matching and RANSAC settings.
        fixed: :func:`fixed_keypoints` of ``pair`` (computed here when None; pass them to refine several starts).

    Returns:
        (3, 3) full-resolution affine and the inlier count; ``init_affine`` itself when inliers < ``cfg.min_inliers``.
    """
    fixed_points, fixed_desc = fixed if fixed is not None else fixed_keypoints(pair, cfg)
    working = geometry.rescale_affine(init_affine, pair.fixed_factors, pair.moving_factors)[None]
    disp = geometry.affine_to_disp(working.to(pair.fixed_features), pair.shape)
    warped_features = geometry.warp(pair.moving_features, disp, padding_mode="border")
    warped_intensity = geometry.warp(pair.moving_intensity, disp)
    inside = geometry.overlap_mask(pair.moving_intensity, disp) > 0.5
    moving_points = detect_keypoints(warped_intensity, inside, cfg.num_keypoints, cfg.nms_radius_px)
    fixed_index, moving_index = match_mutual(
        fixed_points,
        fixed_desc,
        moving_points,
        describe(warped_features, moving_points),
        cfg.search_radius_px,
    )
    threshold = cfg.ransac_threshold_px * max(pair.shape) / _REFERENCE_SIZE_PX
    residual, inliers = ransac_affine(
        fixed_points[fixed_index],
        moving_points[moving_index],
        threshold_px=max(threshold, 1.0),
        iterations=cfg.ransac_iterations,
        seed=cfg.seed,
    )
    count = int(inliers.sum())
    logger.debug("prealign: %d matches, %d inliers", len(fixed_index), count)
    if count < cfg.min_inliers:
        return init_affine, count
    total = geometry.compose_affine(working[0], residual)
    inv = [1 / f for f in pair.fixed_factors], [1 / f for f in pair.moving_factors]
    return geometry.rescale_affine(total, *inv), count
