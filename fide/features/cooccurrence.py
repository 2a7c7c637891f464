"""How often each pair of labels meets, for every translation at once (FFT cross-correlations), and where a score
map over shifts peaks between its pixels.

The joint label counts of two maps at every shift are ``K_a x K_b`` cross-correlations of their (one-hot or soft)
level sets: the global search's cross mutual information (CMIF, Öfverstedt et al., Pattern Recognit. Lett. 2022)
and the precision steps' shift search both read them here. Own code: no library gives correlations at a window of
shifts only, which is where the entropies are evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["correlation_at_shifts", "joint_counts_at_shifts", "parabolic_vertex", "peak_position", "sampled_peak"]


def correlation_at_shifts(spectrum: torch.Tensor, size: Sequence[int], max_shift: int | None) -> torch.Tensor:
    """Inverse real FFT of (..., N, M/2+1) cross spectra on an (N, M) canvas, at shifts -max_shift .. max_shift
    along each axis only: (..., S, S); the whole (..., N, M) canvas when ``max_shift`` is None.

    Transformed along the first axis, cut to the kept rows, then along the second (exactly irfft2's values): the
    search keeps a third of the canvas's rows, and torch's irfft2 took 2.3x as long on its 96 px canvases.
    """
    if max_shift is None:
        return torch.fft.irfft2(spectrum, s=tuple(size))
    shifts = torch.arange(-max_shift, max_shift + 1, device=spectrum.device)
    rows = torch.fft.ifft(spectrum, dim=-2).index_select(-2, shifts % size[0])
    return torch.fft.irfft(rows, n=size[1], dim=-1).index_select(-1, shifts % size[1])


def joint_counts_at_shifts(fixed_sets: torch.Tensor, moving_sets: torch.Tensor, max_shift: int | None) -> torch.Tensor:
    """Joint label counts ``sum_q fixed_a(q) moving_b(q + t)`` for every shift t.

    Args:
        fixed_sets: (Ka, N, M) fixed level sets on the canvas (zero where a pixel must not count).
        moving_sets: (B, Kb, N, M) moving level sets of B poses on the same canvas (weights folded in).
        max_shift: keep shifts |t_i|, |t_j| <= max_shift (the rest wrap around the canvas: pad by it).

    Returns:
        (B, Ka, Kb, S, S) counts (clamped at 0 against FFT rounding) for t = -max_shift .. max_shift along each
        axis, S = 2 max_shift + 1; (B, Ka, Kb, N, M) indexed modulo the canvas when ``max_shift`` is None.
    """
    size = fixed_sets.shape[-2:]
    fixed_f = torch.fft.rfft2(fixed_sets)  # (Ka, N, M/2+1)
    moving_f = torch.fft.rfft2(moving_sets)  # (B, Kb, N, M/2+1)
    cross = fixed_f.conj()[None, :, None] * moving_f[:, None, :]  # (B, Ka, Kb, N, M/2+1)
    return correlation_at_shifts(cross, size, max_shift).clamp(min=0)


def parabolic_vertex(before: float, centre: float, after: float) -> float:
    """Offset in [-0.5, 0.5] pixels of the apex of the parabola through three neighbouring samples of a map whose
    maximum is ``centre`` (0 where they do not curve down): the sub-pixel refinement of a peak along one axis."""
    curvature = before - 2 * centre + after
    return 0.0 if curvature >= 0 else float(np.clip(0.5 * (before - after) / curvature, -0.5, 0.5))


def sampled_peak(values: Sequence[float], grid: Sequence[float]) -> float:
    """Where a curve sampled at the evenly spaced ``grid`` peaks: the best sample, refined by the parabola through it
    and its two neighbours (not beyond half a step; the best sample itself at either end)."""
    best = int(np.argmax(values))
    inside = 0 < best < len(values) - 1
    offset = parabolic_vertex(*values[best - 1 : best + 2]) if inside else 0.0
    return float(grid[best] + offset * (grid[1] - grid[0]))


def peak_position(scores: torch.Tensor) -> torch.Tensor:
    """Position (2,) of the maximum of an (S, S) map, refined between pixels by a parabola through it and its two
    neighbours along each axis (the shift search's whole pixels at 384 px are ~2 px at 834)."""
    side = scores.shape[0]
    index = int(scores.flatten().argmax())
    peak = [index // side, index % side]
    position = scores.new_tensor(peak, dtype=torch.float64)
    for axis in range(2):
        if 0 < peak[axis] < side - 1:
            before, after = list(peak), list(peak)
            before[axis] -= 1
            after[axis] += 1
            position[axis] += parabolic_vertex(*(float(scores[tuple(p)]) for p in (before, peak, after)))
    return position.to(scores)
