"""End to end: `fide register` on a small synthetic SHG/BF task, scored by the bundled evaluator."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, blob_pair, move, similarity
from fake_cuda import FakeCuda, is_fake_cuda, without_gpu

from fide import geometry
from fide.cli._common import seed_everything
from fide.cli.evaluate import evaluate_folder
from fide.config import FideConfig, config_from_dict
from fide.features.encoders import ModalityEncoders
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
    assert (table["status"] == "ok").all(), table  # right poses are trusted: confidence from the fibre texture
    assert (table["confidence"] > 0.9).all() and not table["mirrored"].any()
    result = evaluate_folder(task, tmp_path)
    tre = [case["TRE_lm"]["mean"] for case in result["cases"].values()]
    zero = []
    for pair in pairs:
        fixed, moving = read_landmark_pair(*pair.landmarks())
        zero.append(float(np.linalg.norm(fixed - moving, axis=1).mean()))
    assert len(tre) == 3 and max(tre) < 2.0, f"TRE per pair {tre} (unregistered: {zero})"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_field_is_repeatable_and_matches_the_cpu_field(task):
    """Same input and seed, same field on the same device; CUDA and CPU differ only by float rounding's effects."""
    pair = load_dataset(task).split("val")[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    seed_everything(0)  # what every command does: repeatable CUDA kernels
    cpu = register_pair(fixed, moving, FideConfig(), device="cpu").disp
    first, second = (register_pair(fixed, moving, FideConfig(), device="cuda").disp for _ in range(2))
    assert first.is_cuda and torch.equal(first, second)
    assert float((first.cpu() - cpu).abs().max()) < 0.5


@without_gpu
@pytest.mark.parametrize("learned", [False, True])
def test_every_stage_keeps_its_tensors_on_the_requested_device(task, learned, fast_engine):
    """CI has no GPU: under a CPU stand-in for CUDA, a CPU tensor meeting a CUDA one raises as on a GPU.

    Every stage runs: search, pre-alignment, affine, the layout search and the fibre fallback (forced) and the
    deformable residual. The numbers are computed on the CPU either way, so the field must equal a plain CPU run bit
    for bit.
    """
    pair = load_dataset(task).split("val")[1]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    values = {**FAST_CONFIG, "confidence": {"flag_below": 1.01}}  # every pose doubtful: the fibre fallback runs
    values["deformable"] = {"enabled": True, "iterations": 3}
    values["encoder"] = {"features": "learned" if learned else "handcrafted"}
    cfg = config_from_dict(values)
    encoders = ModalityEncoders(1, (4, 4, 8, 8, 8, 4), 96).eval() if learned else None
    plain = register_pair(fixed, moving, cfg, encoders=encoders)
    with FakeCuda():
        on_cuda = register_pair(fixed, moving, cfg, device="cuda", encoders=encoders and encoders.to("cuda"))
        assert is_fake_cuda(on_cuda.disp) and is_fake_cuda(on_cuda.affine)
    assert {"layout search", "fibres"} <= set(on_cuda.seconds) and on_cuda.notes == plain.notes
    assert torch.equal(on_cuda.disp, plain.disp)


def test_layout_search_runs_only_for_a_pose_nothing_supports(task, fast_engine):
    """A flagged decision gets a second, finer layout search (search.layout_fallback); a trusted one never does."""
    pair = load_dataset(task).split("val")[1]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    trusted = register_pair(fixed, moving, config_from_dict(FAST_CONFIG))
    assert trusted.flag_reason is None and "layout search" not in trusted.seconds
    doubtful = {**FAST_CONFIG, "confidence": {"flag_below": 1.01}, "fibres": {"fallback": False}}
    result = register_pair(fixed, moving, config_from_dict(doubtful))
    assert "layout search" in result.seconds and [n for n in result.notes if n.startswith("layout search")]
    assert result.flag_reason is not None  # nothing reaches a confidence of 1.01: still flagged, with its reason
    doubtful["search"] = {**FAST_CONFIG["search"], "layout_fallback": False}
    assert "layout search" not in register_pair(fixed, moving, config_from_dict(doubtful)).seconds


def test_stage_prefix_and_timings(task):
    pair = load_dataset(task).split("val")[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    result = register_pair(fixed, moving, FideConfig(stages="prealign"))
    assert set(result.stage_affines) == {"search", "prealign"}
    assert result.disp.shape == (1, 2, *fixed.shape[-2:])
    assert torch.allclose(result.disp, geometry.affine_to_disp(result.affine[None], fixed.shape[-2:]))
    assert {"preprocess", "search", "prealign"} <= set(result.seconds)
    assert 0.0 <= result.quality <= 1.0


def test_rgb_fixed_image_falls_back_to_handcrafted_features_unless_learned_is_pinned():
    """The SHG encoders cannot read an RGB fixed image: "auto" registers with MIND-SSC, "learned" says why not."""
    _, bf = blob_pair(96, seed=4)
    truth = similarity(20.0, 1.0, 96, shift=(3.0, -2.0))
    moving = move(bf, truth, fill=242.0)
    encoders = ModalityEncoders(1, (4, 4, 8, 8, 8, 4), 96).eval()
    cfg = FideConfig(stages="prealign")
    result = register_pair(bf, moving, cfg, encoders=encoders)
    assert result.disp.shape == (1, 2, 96, 96)
    cfg.encoder.features = "learned"
    with pytest.raises(ValueError, match="1-channel SHG fixed image"):
        register_pair(bf, moving, cfg, encoders=encoders)


def test_full_resolution_polish_runs_on_a_confident_pose_and_keeps_it_right(task):
    """The last step (fibres.polish_iterations, on by default): texture Adam at full resolution, NMI-gated."""
    pair = load_dataset(task).split("val")[1]  # chosen at texture contrast 0.39 (pair 2's chosen pose: under 0.25)
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    result = register_pair(fixed, moving, FideConfig())
    assert "polish" in result.stage_affines and "polish" in result.seconds
    assert result.confidence > 0.9
    fixed_points, moving_points = (torch.from_numpy(p).float() for p in read_landmark_pair(*pair.landmarks()))
    error = geometry.map_points(fixed_points, result.disp) - moving_points
    assert float(error.norm(dim=1).mean()) < 2.0
    assert "layout" not in result.stage_affines  # the texture recognises this pose: its LNCC result stands
    off = config_from_dict({"fibres": {"polish_iterations": 0}})
    assert "polish" not in register_pair(fixed, moving, off).stage_affines


def test_fibre_fallback_runs_before_the_layout_search_and_a_pose_it_settles_skips_it(task, fast_engine, monkeypatch):
    """Where the fibres settle a doubtful pose the layout search is not spent; where they do not, it still runs."""
    from fide import pipeline

    pair = load_dataset(task).split("val")[1]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    doubtful = config_from_dict({**FAST_CONFIG, "confidence": {"flag_below": 1.01}})
    both = register_pair(fixed, moving, doubtful)
    order = [stage for stage in both.seconds if stage in ("fibres", "layout search")]
    assert order == ["fibres", "layout search"] and both.notes[0].startswith("fibre fallback")

    def settled(inputs, evidence, decision, cfg):
        return evidence, dataclasses.replace(decision, confidence=1.0, reason=None), "fibre fallback kept: settled"

    def must_not_run(*args):
        raise AssertionError("the layout search ran after the fibres settled the pose")

    monkeypatch.setattr(pipeline, "_fibre_fallback", settled)
    monkeypatch.setattr(pipeline, "_layout_fallback", must_not_run)
    result = register_pair(fixed, moving, doubtful)
    assert "fibres" in result.seconds and "layout search" not in result.seconds


def test_the_search_first_candidate_is_a_start_even_where_screening_buries_it(task, monkeypatch):
    """The label-MI screening can rank the correlations' first (right) candidate last on an ambiguous layout: it
    still gets a restart, once (no duplicate where screening kept it anyway)."""
    from fide import pipeline
    from fide.pair import prepare_inputs

    pair = load_dataset(task).split("val")[0]
    cfg = FideConfig()
    inputs, _ = prepare_inputs(read_image(pair.fixed), read_image(pair.moving), cfg, None, None)
    candidates = [similarity(angle, 1.0, 256) for angle in (0.0, 60.0, 120.0, 180.0, -120.0)]
    monkeypatch.setattr(pipeline, "prealign_affine", lambda working, affine, *args: (affine, None))
    for scores, expected in (([0.1, 1.0, 0.99, 0.98, 0.97], 4), ([1.0, 0.99, 0.98, 0.97, 0.96], 3)):
        polished = (torch.stack(candidates), torch.tensor(scores))
        monkeypatch.setattr(pipeline, "optimise_affine", lambda *args, result=polished: result)
        starts, screened = pipeline._screen(candidates, inputs, cfg)
        assert len(starts) == expected and len(screened) == len(candidates)
        assert sum(torch.equal(start, candidates[0]) for start in starts) == 1
