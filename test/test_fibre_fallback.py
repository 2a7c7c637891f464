"""The fibre fallback's grid decision and the texture polish (fide/prealign/fibre_fallback.py), on the sparse pair."""

import dataclasses

import pytest
import torch
from conftest import SPARSE_SIZE, similarity, sparse_fibre_config

from fide import geometry
from fide.config import ConfidenceConfig, FideConfig
from fide.prealign.fibre_fallback import fibre_fallback, texture_polish
from fide.prealign.fibre_texture import FibreTexture

SMALL = sparse_fibre_config()


def _config(**confidence) -> FideConfig:
    cfg = FideConfig(fibres=SMALL, confidence=ConfidenceConfig(**confidence))
    cfg.search.scale_min, cfg.search.scale_max = 0.9, 1.25
    return cfg


def _corner_error(affine: torch.Tensor, truth: torch.Tensor) -> float:
    corners = torch.tensor([[20.0, 20.0], [20.0, 180.0], [180.0, 20.0], [180.0, 180.0]])
    moved = geometry.apply_affine_to_points(affine, corners) - geometry.apply_affine_to_points(truth, corners)
    return float(moved.norm(dim=1).max())


@pytest.fixture(scope="module")
def texture(sparse_pair):
    fixed, moving, _ = sparse_pair
    return FibreTexture(fixed, moving, SMALL)


def test_a_wrong_pose_with_informative_nmi_still_gets_the_grid(sparse_pair, texture):
    """The label NMI is above the quality flag (0.5, no "empty SHG" here), but the wrong pose's texture contrast
    is ~0: it would be flagged, so the grid runs and finds the truth; a configuration that trusts every pose
    sends nothing to the grid (and with no hypotheses, nothing is confirmed)."""
    fixed, moving, truth = sparse_pair
    wrong = truth @ similarity(70.0, 1.0, SPARSE_SIZE)
    found, _, score, note = fibre_fallback(fixed, moving, texture, lambda a: 0.5, _config(), wrong, 0.5, [])
    assert note.startswith("fibre fallback kept") and score >= SMALL.verify_below
    assert _corner_error(found, truth) < 1.5
    trusting = _config(texture_mid=-1.0, texture_width=1e-3)
    kept, quality, _, note = fibre_fallback(fixed, moving, texture, lambda a: 0.5, trusting, wrong, 0.5, [])
    assert note == "fibre fallback: no confirmed match" and torch.equal(kept, wrong) and quality == 0.5


def test_the_polish_is_kept_only_while_the_nmi_holds(sparse_pair, texture):
    fixed, moving, truth = sparse_pair
    near = truth @ similarity(1.0, 1.0, SPARSE_SIZE, shift=(1.0, -1.0))
    start, cfg = texture.score(near), dataclasses.replace(SMALL, polish_iterations=30)
    polished, quality, score = texture_polish(texture, lambda a: 0.5, cfg, near, 0.5, start)
    assert score > start and quality == 0.5 and _corner_error(polished, truth) < _corner_error(near, truth)
    # the NMI falls by 2 % at any other pose: beyond the 1 % tolerance, the start is kept
    unchanged = texture_polish(texture, lambda a: 0.5 if torch.equal(a, near) else 0.49, cfg, near, 0.5, start)
    assert torch.equal(unchanged[0], near) and unchanged[1:] == (0.5, start)
