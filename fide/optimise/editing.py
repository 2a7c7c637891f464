"""Fidelity-imposed displacement editing (FIDE): pull a free-form field towards its fidelity-weighted affine."""

from __future__ import annotations

import torch

from fide import geometry

__all__ = ["edit_displacement", "edit_with_affine"]


def edit_displacement(disp: torch.Tensor, fidelity: torch.Tensor, alpha: float) -> torch.Tensor:
    """``u <- (1 - alpha) u + alpha A(u)``, A the least-squares affine fitted to ``u`` on the fidelity pixels.

    With ``alpha = 1`` (the paper) the result is exactly affine, supported only where the image carries signal
    (SHG >= 1), so empty background cannot drag the transform. Differentiable in ``disp``.

    Args:
        disp: (B, 2, H, W) displacement, pixels, fixed to moving.
        fidelity: (B, 1, H, W) non-negative weights (the fidelity mask).
        alpha: editing strength in [0, 1].

    Returns:
        (B, 2, H, W) edited displacement.
    """
    return edit_with_affine(disp, fidelity, alpha)[0]


def edit_with_affine(
    disp: torch.Tensor, fidelity: torch.Tensor | geometry.AffineFit, alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`edit_displacement` and its fidelity affine A(u) (B, 3, 3), which is also the fidelity affine of the
    edited field (a least-squares fit reproduces an affine field, and the fit is linear): no second fit needed.
    ``alpha = 0`` returns ``disp`` itself and the affine fitted all the same. ``fidelity`` may be the weights'
    :class:`fide.geometry.AffineFit`, built once for a loop that edits many fields under one mask."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    affine = fidelity(disp) if isinstance(fidelity, geometry.AffineFit) else geometry.fit_affine(disp, fidelity)
    if alpha == 0.0:
        return disp, affine
    projected = geometry.affine_to_disp(affine, disp.shape[2:])
    return (projected if alpha == 1.0 else (1 - alpha) * disp + alpha * projected), affine
