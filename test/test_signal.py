"""fide.preprocess.signal: pairs with nothing to register are refused from cheap statistics; real sparse SHG is not."""

import numpy as np
import pytest
import torch
from conftest import blob_pair

from fide.io import DatasetError
from fide.preprocess import signal
from fide.preprocess.signal import check_pair_signal, signal_problem
from fide.synth import make_aligned_pair


def test_real_looking_pair_passes(pair128):
    fixed, moving = pair128
    assert signal_problem(fixed) is None and signal_problem(moving) is None
    check_pair_signal(fixed, moving, "f.nii.gz", "m.nii.gz")


def test_synthetic_empty_cores_are_not_rejected():
    """The nearly empty cores of fide synth (footprint 0.15-0.37, like the emptiest real SHG) must register."""
    found = 0
    for k in range(80):
        shg, bf, info = make_aligned_pair(192, np.random.default_rng([7, k]))
        if info.params["empty_core"]:
            found += 1
            assert signal_problem(torch.from_numpy(shg.astype(np.float32))) is None
            assert signal_problem(torch.from_numpy(bf.astype(np.float32))) is None
        if found == 3:
            break
    assert found == 3, "no empty cores drawn"


@pytest.mark.parametrize("value", [0.0, 255.0])
def test_constant_images_are_refused(pair128, value):
    fixed, moving = pair128
    assert signal_problem(torch.full_like(fixed, value)) == f"image is constant (all pixels {value:g})"
    assert signal_problem(torch.full_like(moving, value)) == f"image is constant (all pixels {value:g})"


def test_blank_shg_names_the_file():
    fixed, moving = blob_pair(64)
    with pytest.raises(DatasetError, match=r"^T_0001_0000.nii.gz: image is constant \(all pixels 0\)$"):
        check_pair_signal(torch.zeros_like(fixed), moving, "T_0001_0000.nii.gz", "T_0001_0001.nii.gz")


def test_shg_of_faint_noise_has_no_signal():
    noise = torch.rand(1, 96, 96, generator=torch.Generator().manual_seed(0)) * 1.5  # detector noise, no tissue
    problem = signal_problem(noise)
    assert problem is not None and problem.startswith("SHG image has no signal") and "0.0 %" in problem


def test_shg_scaled_to_unit_range_is_explained():
    fixed, _ = blob_pair(96)
    problem = signal_problem(fixed / fixed.max())  # not raw counts: the pipeline's footprint would be empty
    assert problem is not None and "raw SHG counts expected" in problem


def test_tissue_free_bright_field_is_refused(pair128):
    _, moving = pair128
    background = 236 + 6 * torch.rand(moving.shape, generator=torch.Generator().manual_seed(1))
    problem = signal_problem(background)
    assert problem is not None and problem.startswith("bright-field image shows no tissue")
    with pytest.raises(DatasetError, match="m.nii.gz: bright-field image shows no tissue"):
        check_pair_signal(pair128[0], background, "f.nii.gz", "m.nii.gz")


def test_too_small_images_are_refused(monkeypatch):
    fixed, moving = blob_pair(128)
    small = torch.nn.functional.interpolate(moving[None], size=(8, 8), mode="area")[0]
    assert signal_problem(small) == "image is 8 x 8 px, smaller than the minimum 16 px per side"
    thin = torch.nn.functional.interpolate(fixed[None], size=(12, 128), mode="area")[0]
    assert signal_problem(thin) == "image is 12 x 128 px, smaller than the minimum 16 px per side"
    monkeypatch.setattr(signal, "MIN_SIDE_PX", 8)
    assert signal_problem(small) is None


def test_large_images_are_judged_on_a_pooled_copy():
    """A 2048 px image: the statistics run on a <= 1024 px copy and reach the same verdicts."""
    fixed, moving = blob_pair(128)
    big_fixed = torch.nn.functional.interpolate(fixed[None], size=(2048, 2048), mode="nearest")[0]
    big_moving = torch.nn.functional.interpolate(moving[None], size=(2048, 2048), mode="nearest")[0]
    assert signal_problem(big_fixed) is None and signal_problem(big_moving) is None
    big_noise = torch.rand(1, 2048, 2048, generator=torch.Generator().manual_seed(2)) * 1.5
    assert signal_problem(big_noise).startswith("SHG image has no signal")


def test_wrong_shape_is_a_value_error():
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        signal_problem(torch.zeros(4, 32, 32))


def test_a_pale_unsaturated_stain_is_not_refused():
    """A stain the H&E tissue mask misses (pale, unsaturated: immunohistochemistry, as HISTOLM's) is still tissue."""
    grid = torch.stack(torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij"))
    blob = ((grid - 64).pow(2).sum(0) < 40**2).float()
    pale = 246 - 40 * blob[None].expand(3, -1, -1).clone()  # grey and bright (206): the mask calls it background
    pale[2] += 6 * blob  # a faint blue tint
    from fide.preprocess.masks import bf_tissue

    assert float(bf_tissue(pale[None]).float().mean()) < 0.02  # the H&E mask sees nothing
    assert signal_problem(pale) is None
