"""The fibre texture NCC (fide/prealign/fibre_texture.py): a sharp peak at the true pose of a nearly empty SHG."""

import pytest
import torch
from conftest import SPARSE_SIZE, similarity

from fide import geometry
from fide.prealign import fibre_texture
from fide.prealign.fibre_match import band_pass, collagen_patches

SIZE = SPARSE_SIZE
# every test here runs with the fibre constants of the sparse test texture (conftest.sparse_fibres)
pytestmark = pytest.mark.usefixtures("sparse_fibres")


def test_texture_score_is_high_at_the_truth_only(sparse_pair):
    fixed, moving, truth = sparse_pair
    at_truth = fibre_texture.texture_score(fixed, moving, truth)
    off = truth @ similarity(8.0, 1.0, SIZE)
    assert at_truth > 0.8
    assert fibre_texture.texture_score(fixed, moving, off) < 0.5 * at_truth


@pytest.mark.parametrize("fit", ["refine", "polish"])
def test_texture_fits_remove_a_small_error(sparse_pair, fit):
    """Levenberg-Marquardt (the fits of confirmed poses) and Adam (the polish) both converge near the truth."""
    fixed, moving, truth = sparse_pair
    band = [band_pass(image, 1.0, 6.0) for image in (fixed, moving)]
    patches = collagen_patches(fixed, 4, 3.0, 100.0)
    start = truth @ similarity(1.0, 1.01, SIZE, shift=(1.0, -1.0))
    if fit == "refine":
        refined, score = fibre_texture.refine_on_patches(*band, patches, start, iterations=20)
    else:
        refined, score = fibre_texture.polish_on_patches(*band, patches, start, iterations=60, learning_rate=0.1)
    points = torch.stack([patch.centre for patch in patches])  # the affine is only constrained where the patches are
    error = geometry.apply_affine_to_points(refined, points) - geometry.apply_affine_to_points(truth, points)
    before = geometry.apply_affine_to_points(start, points) - geometry.apply_affine_to_points(truth, points)
    assert float(error.norm(dim=1).max()) < 0.3 < 1.0 < float(before.norm(dim=1).max())
    assert score > 0.9


def test_texture_contrast_is_a_peak_at_the_truth_only(sparse_pair):
    fixed, moving, truth = sparse_pair
    texture = fibre_texture.FibreTexture(fixed, moving)
    assert texture.has_patches
    at_truth = texture.contrast(truth, shift_px=30.0)
    assert at_truth > 0.5
    assert abs(texture.contrast(truth @ similarity(70.0, 1.0, SIZE), shift_px=30.0)) < 0.25 * at_truth


def test_scores_and_contrasts_of_a_batch_equal_each_pose_on_its_own(sparse_pair):
    """The decision's evidence scores every hypothesis and its 8 shifted poses in one pass."""
    fixed, moving, truth = sparse_pair
    texture = fibre_texture.FibreTexture(fixed, moving)
    poses = torch.stack([truth, truth @ similarity(70.0, 1.0, SIZE), truth @ similarity(-3.0, 1.02, SIZE)])
    scores, contrasts = texture.scores_and_contrasts(poses, shift_px=30.0)
    for pose, score, contrast in zip(poses, scores.tolist(), contrasts.tolist()):
        assert score == pytest.approx(texture.score(pose), abs=1e-5)
        assert contrast == pytest.approx(texture.contrast(pose, shift_px=30.0), abs=1e-5)
    assert contrasts[0] > 0.5 > abs(contrasts[1])


def test_texture_scores_in_chunks_equal_one_pass(sparse_pair, monkeypatch):
    fixed, moving, truth = sparse_pair
    texture = fibre_texture.FibreTexture(fixed, moving)
    poses = torch.stack([truth, truth @ similarity(8.0, 1.0, SIZE), truth @ similarity(-3.0, 1.02, SIZE)])
    together = texture.scores(poses)
    monkeypatch.setattr(fibre_texture, "_SCORE_POINTS", 1)  # one pose per chunk
    apart = texture.scores(poses)
    assert torch.allclose(together, apart, atol=1e-6)
    assert abs(float(together[0]) - texture.score(truth)) < 1e-6 and float(together[0]) > 2 * float(together[1])
