"""Compass search that takes a step only where every criterion rises (a Pareto ascent), without gradients.

Label-map NMI at full resolution is piecewise flat between pixels and Adam on a field stops where its gradient at a
coarser level vanishes; the compass search (Kolda, Lewis & Torczon, SIAM Review 2003) only compares values. Several
criteria must all rise, so a move that one view of the data favours and another disputes is never taken. Own code:
SciPy's direct-search methods take one scalar objective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["compass_search"]


def compass_search(
    scores: Callable[[np.ndarray], Sequence[float]],
    dims: int,
    start_step: float,
    min_step: float,
    max_evaluations: int,
) -> tuple[np.ndarray, list[float], int]:
    """Maximise every criterion of ``scores`` together from the origin of ``dims`` parameters.

    Sweeps the axes in turn; along each, ``+step`` then ``-step`` is tried and the first move that raises *every*
    criterion is taken before the next axis. A sweep without a move halves the step. Stops when the step falls under
    ``min_step`` or after ``max_evaluations`` calls of ``scores`` (the start's included). Deterministic.

    Args:
        scores: parameters (dims,) → the criteria there (each higher is better).
        dims: number of parameters.
        start_step, min_step: first and smallest step, in the parameters' units.
        max_evaluations: budget of calls to ``scores``.

    Returns:
        The parameters reached (dims,), their criteria, and the number of calls made.
    """
    if start_step <= 0 or min_step <= 0 or max_evaluations < 1:
        raise ValueError(f"need positive steps and evaluations, got {start_step}, {min_step}, {max_evaluations}")
    position = np.zeros(dims)
    best = list(scores(position))
    calls, step = 1, start_step
    while step >= min_step:
        moved = False
        for axis in range(dims):
            for sign in (1.0, -1.0):
                if calls >= max_evaluations:
                    return position, best, calls
                trial = position.copy()
                trial[axis] += sign * step
                values = list(scores(trial))
                calls += 1
                if all(v > b for v, b in zip(values, best)):
                    position, best, moved = trial, values, True
                    break
        if not moved:
            step /= 2
    return position, best, calls
