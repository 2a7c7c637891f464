"""End to end: `fide register` on a small synthetic SHG/BF task, scored by the bundled evaluator."""

import numpy as np
import pytest
import torch

from fide import geometry
from fide.cli.evaluate import evaluate_folder
from fide.config import FideConfig
from fide.io import load_dataset, read_image, read_landmark_pair
from fide.pipeline import register_pair
from fide.runner import register_pairs
from fide.synth import make_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return make_task(tmp_path_factory.mktemp("synth"), pairs=3, size=256, seed=11)


def test_register_brings_every_pair_under_two_pixels(task, tmp_path):
    """The issue's acceptance test: a 3-pair synthetic task, every pair under 2 px (256 px images)."""
    pairs = load_dataset(task).split("val")
    table = register_pairs(pairs, tmp_path, FideConfig())
    assert (table["status"] != "failed").all()
    result = evaluate_folder(task, tmp_path)
    tre = [case["TRE_lm"]["mean"] for case in result["cases"].values()]
    zero = []
    for pair in pairs:
        fixed, moving = read_landmark_pair(*pair.landmarks())
        zero.append(float(np.linalg.norm(fixed - moving, axis=1).mean()))
    assert len(tre) == 3 and max(tre) < 2.0, f"TRE per pair {tre} (unregistered: {zero})"


def test_stage_prefix_and_timings(task):
    pair = load_dataset(task).split("val")[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    result = register_pair(fixed, moving, FideConfig(stages="prealign"))
    assert set(result.stage_affines) == {"search", "prealign"}
    assert result.disp.shape == (1, 2, *fixed.shape[-2:])
    assert torch.allclose(result.disp, geometry.affine_to_disp(result.affine[None], fixed.shape[-2:]))
    assert {"preprocess", "search", "prealign"} <= set(result.seconds)
    assert 0.0 <= result.quality <= 1.0
