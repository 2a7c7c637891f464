"""When two poses are the same: fide's one rule, used wherever hypotheses are merged, pruned or compared.

Two fixed → moving affines are the same pose when they map every corner of the fixed image within a fraction of its
longest side of each other. Rotations, scales, shears, shifts and mirrors all show at the corners, so one number
replaces per-parameter tolerances (angle, log-scale, shift), which disagree about poses that differ in several
parameters at once. Each caller picks the fraction its purpose needs (a search's basin, a restart's reach).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["corner_positions", "same_pose", "distinct_poses", "shift_pose", "nudge_pose"]


def shift_pose(affines: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) fixed → moving affines ``A`` moved by fixed-frame shifts (..., 2): ``p ↦ A (p + t)``, array order.

    A shift found by correlating on the fixed grid is one of these; on a level of a pair (:class:`PairLevel`) a
    shift of ``t`` level pixels is ``t / fixed_factors`` full-resolution pixels.
    """
    shifted = affines.clone()
    shifted[..., :2, 2] = shifted[..., :2, 2] + (affines[..., :2, :2] @ shifts.to(affines).unsqueeze(-1)).squeeze(-1)
    return shifted


def nudge_pose(affine: torch.Tensor, moves: Sequence[float], centre: torch.Tensor, radius: float) -> torch.Tensor:
    """A (3, 3) fixed → moving affine after a small fixed-frame affine about ``centre`` (2,), array order.

    ``moves`` = (shift_i, shift_j, turn, scale, stretch, shear), each in pixels moved at ``radius`` from the centre
    (shifts: everywhere), so that one step size means the same displacement along every parameter:
    ``p ↦ A (c + R(turn / radius) M (p - c) + t)`` with ``M = I + [[scale + stretch, shear], [shear, scale - stretch]]
    / radius``. All zeros give ``affine`` itself.
    """
    shift_i, shift_j, turn, scale, stretch, shear = (float(m) for m in moves)
    angle = turn / radius
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float64)
    linear = rotation @ (
        torch.eye(2, dtype=torch.float64)
        + torch.tensor([[scale + stretch, shear], [shear, scale - stretch]], dtype=torch.float64) / radius
    )
    centre = centre.detach().to("cpu", torch.float64)
    nudge = torch.eye(3, dtype=torch.float64)
    nudge[:2, :2] = linear
    nudge[:2, 2] = centre - linear @ centre + torch.tensor([shift_i, shift_j], dtype=torch.float64)
    return (affine.detach().to("cpu", torch.float64) @ nudge).to(affine)


def corner_positions(affines: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Where (B, 3, 3) (or (3, 3)) fixed → moving affines put the four corners of a fixed image of ``shape`` (H, W):
    (B, 4, 2) (or (4, 2)), float64 on the CPU, array order."""
    h, w = shape
    corners = torch.tensor([[0.0, 0.0], [0.0, w - 1.0], [h - 1.0, 0.0], [h - 1.0, w - 1.0]], dtype=torch.float64)
    matrices = affines.detach().to("cpu", torch.float64)
    return corners @ matrices[..., :2, :2].transpose(-1, -2) + matrices[..., None, :2, 2]


def same_pose(a: torch.Tensor, b: torch.Tensor, shape: Sequence[int], tolerance: float) -> bool:
    """Whether two (3, 3) fixed → moving affines map every corner of a fixed image of ``shape`` (H, W) within
    ``tolerance`` x its longest side of each other."""
    gap = (corner_positions(a, shape) - corner_positions(b, shape)).norm(dim=-1).max()
    return float(gap) <= tolerance * max(shape)


def distinct_poses(
    poses: Sequence[torch.Tensor] | torch.Tensor,
    shape: Sequence[int],
    tolerance: float,
    known: Sequence[torch.Tensor] = (),
    limit: int | None = None,
) -> list[int]:
    """Indices of ``poses`` kept in order, each kept unless it is the same pose (:func:`same_pose`) as a ``known``
    one or an earlier kept one: with poses sorted best first, the best of each basin (non-maximum suppression).

    Args:
        poses: (N, 3, 3) affines, or a sequence of (3, 3).
        shape: (H, W) of the fixed image.
        tolerance: fraction of the fixed image's longest side.
        known: (3, 3) poses already held (none of ``poses`` that matches one is kept).
        limit: stop after this many kept (all when None).

    Returns:
        Indices into ``poses``, increasing.
    """
    if len(poses) == 0 or limit == 0:
        return []
    stacked = poses if isinstance(poses, torch.Tensor) else torch.stack(list(poses))
    landed = corner_positions(stacked, shape)  # (N, 4, 2)
    reach = tolerance * max(shape)
    held = [corner_positions(pose, shape) for pose in known]
    kept: list[int] = []
    for index in range(len(landed)):
        if all(float((landed[index] - other).norm(dim=-1).max()) > reach for other in held):
            kept.append(index)
            held.append(landed[index])
            if limit is not None and len(kept) == limit:
                break
    return kept
