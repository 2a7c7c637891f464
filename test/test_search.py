"""Global search: a 180° turn is found as easily as 37°, with scale and shift."""

import pytest
import torch
from conftest import move, similarity

from fide import geometry
from fide.config import SearchConfig
from fide.features import one_hot_labels
from fide.pipeline import _centroid
from fide.prealign import search
from fide.prealign.search import cross_mutual_information, search_layout, search_similarity
from fide.preprocess import prepare_pair


def _prepared(fixed, moving):
    prepared_fixed, prepared_moving = prepare_pair(fixed, moving)
    colours = (prepared_fixed.colour, prepared_moving.colour)
    return colours, (_centroid(prepared_fixed.tissue), _centroid(prepared_moving.tissue))


@pytest.mark.parametrize("angle,scale", [(180.0, 1.0), (37.0, 1.1), (-95.0, 0.9)])
def test_search_recovers_rotation_scale_and_shift(pair128, angle, scale):
    shg, bf = pair128
    truth = similarity(angle, scale, 128, shift=(6.0, -4.0))
    (fixed_colour, moving_colour), centres = _prepared(shg, move(bf, truth, fill=242.0))
    cfg = SearchConfig(size_px=64, angle_step_deg=6.0, scale_min=0.8, scale_max=1.25, top_k=2)
    best = search_similarity(fixed_colour, moving_colour, centres, cfg)[0]
    points = geometry.identity_grid((128, 128))[:, 24:-24:8, 24:-24:8].reshape(2, -1).T
    error = geometry.apply_affine_to_points(best.affine, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).mean()) < 2.0
    assert abs((best.angle_deg - angle + 180) % 360 - 180) < 3.0


def test_cross_mutual_information_peaks_at_true_shift():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (1, 1, 32, 32), generator=generator)
    fixed = one_hot_labels(labels, 3)[0]
    shifted = torch.roll(labels, shifts=(3, -5), dims=(2, 3))
    mi = cross_mutual_information(fixed, one_hot_labels(shifted, 3), min_overlap=0.3)
    index = int(mi[0].flatten().argmax())
    assert (index // 32, index % 32) == (3, 32 - 5)  # fixed(q) matches moving(q + t), t = (3, -5) mod 32


def test_correlation_criterion_on_comparable_maps_ranks_the_truth_first(pair128):
    """A pair of comparable maps (as the learned encoders give) proposes the first candidate; labels follow."""
    shg, bf = pair128
    truth = similarity(-140.0, 1.05, 128, shift=(-5.0, 3.0))
    moving_bf = move(bf, truth, fill=242.0)
    prepared_fixed, prepared_moving = prepare_pair(shg, moving_bf)
    # an idealised shared representation: the fixed SHG itself, carried into the moving frame
    fixed_map = prepared_fixed.intensity
    moving_map = move(fixed_map[0], truth, fill=0.0)[None]
    cfg = SearchConfig(size_px=64, scale_min=0.8, scale_max=1.25, top_k=2)
    centres = (_centroid(prepared_fixed.tissue), _centroid(prepared_moving.tissue))
    candidates = search_similarity(
        prepared_fixed.colour, prepared_moving.colour, centres, cfg, intensities=[(fixed_map, moving_map)]
    )
    assert 1 <= len(candidates) <= 2 * cfg.top_k
    assert abs((candidates[0].angle_deg + 140.0 + 180) % 360 - 180) < 3.0
    points = geometry.identity_grid((128, 128))[:, 24:-24:8, 24:-24:8].reshape(2, -1).T
    found = geometry.apply_affine_to_points(candidates[0].affine, points)
    error = found - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).mean()) < 2.0


def test_rotation_grid_limits_and_always_holds_the_identity():
    from fide.prealign.search import rotation_angles_deg

    full = rotation_angles_deg(6.0)
    assert len(full) == 60 and float(full.min()) == -180.0 and float(full.max()) < 180.0
    limited = rotation_angles_deg(6.0, 20.0)
    assert limited.tolist() == [-18.0, -12.0, -6.0, 0.0, 6.0, 12.0, 18.0]
    assert rotation_angles_deg(6.0, 0.0).tolist() == [0.0]
    with pytest.raises(ValueError, match="step_deg"):
        rotation_angles_deg(0.0)


def test_mirror_option_is_looked_up():
    from fide.prealign.search import search_mirrors

    assert search_mirrors("auto") == (False, True) and search_mirrors("never") == (False,)
    assert search_mirrors("always") == (True,)
    with pytest.raises(ValueError, match="search.mirror must be one of"):
        search_mirrors("yes")
    with pytest.raises(ValueError, match="search.mirror must be one of"):
        SearchConfig(mirror="sometimes")


def test_search_finds_a_mirrored_slide_under_auto_only(pair128):
    shg, bf = pair128
    flip = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 127.0], [0.0, 0.0, 1.0]])
    truth = similarity(40.0, 1.0, 128, shift=(3.0, -2.0)) @ flip
    (fixed_colour, moving_colour), centres = _prepared(shg, move(bf, truth, fill=242.0))
    cfg = SearchConfig(size_px=64, scale_min=0.9, scale_max=1.1, scale_steps=3, top_k=2)
    points = geometry.identity_grid((128, 128))[:, 24:-24:8, 24:-24:8].reshape(2, -1).T

    def error(candidate):
        moved = geometry.apply_affine_to_points(candidate.affine, points)
        return float((moved - geometry.apply_affine_to_points(truth, points)).norm(dim=1).mean())

    best = search_similarity(fixed_colour, moving_colour, centres, cfg)[0]
    assert best.mirror and error(best) < 2.0
    unmirrored = search_similarity(
        fixed_colour, moving_colour, centres, SearchConfig(**{**cfg.__dict__, "mirror": "never"})
    )
    assert not any(c.mirror for c in unmirrored) and min(error(c) for c in unmirrored) > 5.0


def test_search_within_a_known_rotation_range(pair128):
    shg, bf = pair128
    truth = similarity(14.0, 1.0, 128, shift=(4.0, 2.0))
    (fixed_colour, moving_colour), centres = _prepared(shg, move(bf, truth, fill=242.0))
    cfg = SearchConfig(size_px=64, scale_min=0.9, scale_max=1.1, scale_steps=3, max_rotation_deg=20.0)
    candidates = search_similarity(fixed_colour, moving_colour, centres, cfg)
    assert all(abs(c.angle_deg) <= 20.0 + search.REFINE_ANGLE_DEG for c in candidates)
    assert abs(candidates[0].angle_deg - 14.0) < 3.0


def test_label_criterion_always_runs_and_proposes_its_own_candidates(pair128, monkeypatch):
    """Label MI recognises the coarse layout where no intensity relation holds: it runs even where both correlation
    criteria agree on a pose (they can agree on a wrong one), and its candidates come after theirs."""
    shg, bf = pair128
    truth = similarity(-140.0, 1.05, 128, shift=(-5.0, 3.0))
    prepared_fixed, prepared_moving = prepare_pair(shg, move(bf, truth, fill=242.0))
    fixed_map = prepared_fixed.intensity
    wrong = (fixed_map, move(fixed_map[0], similarity(60.0, 1.0, 128), fill=0.0)[None])
    centres = (_centroid(prepared_fixed.tissue), _centroid(prepared_moving.tissue))
    label_levels = []
    original = search._label_level
    monkeypatch.setattr(search, "_label_level", lambda *a, **k: label_levels.append(1) or original(*a, **k))
    cfg = SearchConfig(size_px=64, scale_min=0.8, scale_max=1.25, top_k=1)
    candidates = search_similarity(
        prepared_fixed.colour, prepared_moving.colour, centres, cfg, intensities=[wrong, wrong]
    )
    assert label_levels == [1, 1]  # the coarse and the refinement level
    assert len(candidates) == 2 and abs(candidates[0].angle_deg - 60.0) < 5.0  # the agreeing (wrong) correlations
    assert abs((candidates[1].angle_deg + 140.0 + 180) % 360 - 180) < 5.0  # the label MI finds the truth


def test_layout_search_uses_finer_labels_and_proposes_more_distinct_poses(pair128, monkeypatch):
    """The second look for a pose nothing supports: label MI alone, LAYOUT_LABELS levels, LAYOUT_TOP_K candidates."""
    shg, bf = pair128
    truth = similarity(75.0, 0.95, 128, shift=(3.0, -6.0))
    (fixed_colour, moving_colour), centres = _prepared(shg, move(bf, truth, fill=242.0))
    levels = []
    original = search._label_level
    monkeypatch.setattr(search, "_label_level", lambda *a, **k: levels.append(a[3]) or original(*a, **k))
    cfg = SearchConfig(size_px=64, scale_min=0.8, scale_max=1.25, top_k=1)
    candidates = search_layout(fixed_colour, moving_colour, centres, cfg)
    assert levels == [search.LAYOUT_LABELS] * 2 and search.LAYOUT_LABELS > search.NUM_LABELS
    assert 1 < len(candidates) <= search.LAYOUT_TOP_K  # top_k of the first search does not bound it
    affines = [c.affine for c in candidates]
    assert geometry.distinct_poses(affines, (128, 128), 0.04) == list(range(len(affines)))
    points = geometry.identity_grid((128, 128))[:, 24:-24:8, 24:-24:8].reshape(2, -1).T
    error = geometry.apply_affine_to_points(affines[0], points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).mean()) < 2.0
