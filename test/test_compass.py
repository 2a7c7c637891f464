"""Compass search that moves only where every criterion rises (fide/optimise/compass.py)."""

import numpy as np
import pytest

from fide.optimise.compass import compass_search


def test_compass_search_climbs_a_smooth_peak_to_within_its_smallest_step():
    peak = np.array([1.3, -0.6, 2.1])

    def scores(x):
        return [-float(((x - peak) ** 2).sum())]

    position, best, calls = compass_search(scores, 3, start_step=1.0, min_step=0.125, max_evaluations=500)
    assert np.abs(position - peak).max() <= 0.125
    assert best == scores(position)
    assert calls < 500


def test_compass_search_never_takes_a_move_that_one_criterion_disputes():
    """Two criteria peaking on either side of the start: every move raises one and lowers the other."""

    def scores(x):
        return [-float((x[0] - 1) ** 2), -float((x[0] + 1) ** 2)]

    position, best, calls = compass_search(scores, 1, start_step=0.5, min_step=0.1, max_evaluations=100)
    assert position.tolist() == [0.0]
    assert best == [-1.0, -1.0]
    assert calls == 1 + 2 * 3  # both signs at steps 0.5, 0.25, 0.125


def test_compass_search_keeps_to_its_budget_and_rejects_bad_settings():
    calls_made = []

    def scores(x):
        calls_made.append(1)
        return [float(x.sum())]  # rises forever along +x

    _, _, calls = compass_search(scores, 2, start_step=1.0, min_step=0.5, max_evaluations=7)
    assert calls == len(calls_made) == 7
    with pytest.raises(ValueError):
        compass_search(scores, 2, start_step=0.0, min_step=0.5, max_evaluations=7)
