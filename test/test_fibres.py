"""The fibre fallback (fide/prealign/fibres.py) on a nearly empty SHG: a few textured patches, nothing else."""

import pytest
import torch
from conftest import FAST_CONFIG, SPARSE_SIZE, fibre_texture, similarity

from fide import geometry
from fide.config import config_from_dict
from fide.pipeline import register_pair
from fide.prealign import fibres
from fide.prealign.fibre_match import similarity_grid
from fide.prealign.fibre_texture import TEXTURE_PATCHES
from fide.preprocess.intensity import HE_STAINS

SIZE = SPARSE_SIZE
# every test here runs with the fibre constants of the sparse test texture (conftest.sparse_fibres)
pytestmark = pytest.mark.usefixtures("sparse_fibres")


def test_fibre_search_finds_a_150_degree_turn_from_patches_alone(sparse_pair):
    fixed, moving, truth = sparse_pair
    off = truth @ similarity(8.0, 1.0, SIZE)
    match = fibres.fibre_search(fixed, moving, scale_range=(0.9, 1.25), current=off)
    assert match is not None
    assert match.current_score == fibres.texture_score(fixed, moving, off)  # scored on the same level
    points = torch.tensor([[40.0, 40.0], [160.0, 60.0], [100.0, 100.0], [60.0, 160.0], [150.0, 150.0]])
    error = geometry.apply_affine_to_points(match.affine, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 1.0, match.affine


def test_an_unconfirmed_vote_gives_no_match(sparse_pair):
    """Patches of one texture against an unrelated texture: whatever wins the vote, the patches do not agree."""
    fixed, _, _ = sparse_pair
    assert fibres.fibre_search(fixed, fibre_texture(SIZE, seed=9), scale_range=(0.9, 1.25)) is None


def test_fewer_than_two_patches_give_no_match():
    fixed = torch.zeros(1, 1, SIZE, SIZE)
    fixed[0, 0, 90:110, 90:110] = fibre_texture(20, seed=1)[0, 0] + 0.5
    assert fibres.fibre_search(fixed, fibre_texture(SIZE, seed=2), scale_range=(0.9, 1.1)) is None


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_fallback_in_register_pair_recovers_an_empty_core(sparse_pair, device, fast_engine):
    """End to end: SHG of patches only, bright field from the same texture as eosin; the fallback is forced."""
    fixed, moving, truth = sparse_pair
    eosin = HE_STAINS[1] / HE_STAINS[1].norm()
    concentration = 0.15 + 0.6 * moving[0]  # (1, H, W): stroma stained everywhere, fibres darker
    rgb = 240 * torch.pow(10, -eosin.view(3, 1, 1) * concentration)
    shg = 1 + 120 * fixed[0]
    values = {**FAST_CONFIG, "confidence": {"flag_below": 1.01}}  # every pose doubtful: the fallback runs
    result = register_pair(shg, rgb, config_from_dict(values), device=device)
    assert result.disp.device.type == device
    assert "fibres" in result.seconds
    assert [note.split(" ")[0] for note in result.notes] == ["fibre", "layout"]  # the fibres run first
    assert result.notes[0].startswith("fibre fallback kept: texture contrast")
    points = torch.tensor([[60.0, 60.0], [140.0, 140.0], [100.0, 100.0]])
    error = geometry.map_points(points, result.disp.cpu()) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 1.5


def _flip_j(size: int) -> torch.Tensor:
    """Fixed→moving left-right mirror of a size × size image (column j ↦ size - 1 - j)."""
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, size - 1.0], [0.0, 0.0, 1.0]])


def test_a_true_hypothesis_is_confirmed_without_the_grid(sparse_pair):
    """A pose the search already found is checked by the patches alone; wrong hypotheses confirm nothing."""
    fixed, moving, truth = sparse_pair
    near = truth @ similarity(3.0, 1.0, SIZE, shift=(2.0, -1.0))
    wrong = [truth @ similarity(angle, 1.0, SIZE) for angle in (60.0, -100.0)]
    match = fibres.fibre_search(fixed, moving, (0.9, 1.25), hypotheses=[*wrong, near], grid=False)
    assert match is not None and match.grid_score != match.grid_score  # NaN: no grid was searched
    points = torch.tensor([[40.0, 40.0], [160.0, 60.0], [100.0, 100.0], [60.0, 160.0]])
    error = geometry.apply_affine_to_points(match.affine, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 1.0
    assert fibres.fibre_search(fixed, moving, (0.9, 1.25), hypotheses=wrong, grid=False) is None


def test_the_grid_holds_mirrored_poses_only_when_asked(sparse_pair):
    fixed, moving, truth = sparse_pair
    mirrored = geometry.warp(moving, geometry.affine_to_disp(_flip_j(SIZE)[None], (SIZE, SIZE)))
    assert fibres.fibre_search(fixed, mirrored, (0.9, 1.25)) is None  # unmirrored grid: nothing agrees
    match = fibres.fibre_search(fixed, mirrored, (0.9, 1.25), mirrors=(False, True))
    assert match is not None and float(torch.linalg.det(match.affine[:2, :2])) < 0
    expected = _flip_j(SIZE) @ truth  # fixed → original moving → mirrored moving
    points = torch.tensor([[60.0, 60.0], [140.0, 140.0], [100.0, 100.0]])
    error = geometry.apply_affine_to_points(match.affine, points) - geometry.apply_affine_to_points(expected, points)
    assert float(error.norm(dim=1).max()) < 1.0


def test_grid_shells_hold_the_likely_scales_only_unmirrored_before_mirrored():
    """The fallback's time bound: two shells at the nominal scales, every other scale left to the global search."""
    from fide.prealign.fibre_match import similarity_grid

    linear = similarity_grid(0.8, 1.25, 30.0, 0.06, mirrors=(False, True))
    shells = fibres._grid_shells(linear, (0.9, 1.1))
    scale = torch.linalg.det(linear).abs().sqrt()
    likely = (scale >= 0.9 - 1e-6) & (scale <= 1.1 + 1e-6)
    assert len(shells) == 2 and sum(len(shell) for shell in shells) == int(likely.sum()) < len(linear)
    dets = [torch.linalg.det(shell) for shell in shells]
    assert bool((dets[0] > 0).all() and (dets[1] < 0).all())
    for det in dets:
        assert bool(((det.abs().sqrt() >= 0.9 - 1e-6) & (det.abs().sqrt() <= 1.1 + 1e-6)).all())
    assert len(fibres._grid_shells(linear[torch.linalg.det(linear) > 0], (0.9, 1.1))) == 1  # no empty shells


def test_the_grid_stops_at_the_first_shell_that_confirms_a_pose(sparse_pair, monkeypatch):
    """An unmirrored pair searched with mirrored poses allowed: the mirrored shells are never scored."""
    fixed, moving, truth = sparse_pair
    searched = []
    original = fibres._best_poses

    def spy(level, linear, *args):
        searched.append(bool((torch.linalg.det(linear) < 0).any()))
        return original(level, linear, *args)

    monkeypatch.setattr(fibres, "_best_poses", spy)
    match = fibres.fibre_search(fixed, moving, (0.9, 1.25), mirrors=(False, True))
    assert match is not None and match.texture_score >= fibres.VERIFY_BELOW
    assert searched and not any(searched)


def test_hypotheses_that_are_the_same_pose_are_confirmed_once(sparse_pair, monkeypatch):
    fixed, moving, truth = sparse_pair
    nudged = truth.clone()
    nudged[:2, 2] += 0.5  # half a pixel: the same pose
    turned = truth @ similarity(20.0, 1.0, SIZE)
    confirmed = []
    original = fibres._confirm

    def spy(level, pose, seed):
        confirmed.append(pose)
        return original(level, pose, seed)

    monkeypatch.setattr(fibres, "_confirm", spy)
    fibres.fibre_search(fixed, moving, (0.9, 1.1), hypotheses=[truth, nudged, turned], grid=False)
    assert len(confirmed) == 2 and torch.equal(confirmed[0], truth) and torch.equal(confirmed[1], turned)


def test_grid_candidates_come_from_every_vote_without_repeats(sparse_pair):
    fixed, moving, truth = sparse_pair
    level = fibres.texture_level(fixed, moving, SIZE, fibres.GRID_BAND_PX, fibres.GRID_PATCHES)
    linear = similarity_grid(0.9, 1.1, 12.0, 0.1, (False,), 180.0)
    one = fibres._best_poses(level, linear, 16, fibres.POOL_PX, 3, ("median",))
    both = fibres._best_poses(level, linear, 16, fibres.POOL_PX, 3, ("median", "mean"))
    assert 3 <= len(both) <= 6 and torch.equal(both[0][1], one[0][1])  # the first vote's best comes first
    shape = level.fixed_band.shape[-2:]  # no two are one pose by fide's rule
    assert geometry.distinct_poses([a for _, a in both], shape, fibres.GRID_DISTINCT) == list(range(len(both)))
    with pytest.raises(ValueError, match="votes"):
        fibres._best_poses(level, linear, 16, fibres.POOL_PX, 3, ("max",))


def test_texture_fits_run_only_where_they_can_still_matter(sparse_pair, monkeypatch):
    """A pose already at the verify bar skips the fine-level fit; a wrong pose stops after it."""
    fixed, moving, truth = sparse_pair
    # the toy texture's wrong poses fit to ~0.2 (few patch pixels): a bar the true pose (0.93) still passes
    monkeypatch.setattr(fibres, "VERIFY_BELOW", 0.6)
    fine = fibres.texture_level(fixed, moving, fibres.REFINE_SIZE_PX, fibres.GRID_BAND_PX, TEXTURE_PATCHES)
    texture = fibres.FibreTexture(fixed, moving)
    calls = []
    fine_fit, full_fit = fibres.refine_on_patches, texture.refine
    monkeypatch.setattr(fibres, "refine_on_patches", lambda *args: calls.append("fine") or fine_fit(*args))
    monkeypatch.setattr(texture, "refine", lambda *args: calls.append("full") or full_fit(*args))
    assert texture.score(truth) >= fibres.VERIFY_BELOW
    _, score = fibres._fit_texture(fine, texture, truth)
    assert calls == ["full"] and score >= texture.score(truth)
    calls.clear()
    wrong = truth @ similarity(70.0, 1.0, SIZE)
    affine, score = fibres._fit_texture(fine, texture, wrong)
    assert calls == ["fine"] and score < fibres.VERIFY_BELOW / 2
    assert score == pytest.approx(texture.score(affine), abs=1e-6)  # the score of the pose returned
