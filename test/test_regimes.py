"""fide.synth.regimes: each acquisition regime's geometry, exact ground truth and image effects."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from fide.cli.main import main as fide_main
from fide.geometry import warp
from fide.synth import make_pair
from fide.synth.regimes import REGIMES, adjust_contrast, look_up_regime, upsampling_blur

SIZE = 128


def _linear(pair: dict) -> np.ndarray:
    return pair["misalignment"].affine[:2, :2]


def test_core_regime_is_the_original_generator():
    default = make_pair("val", 1, 96, 3)
    core = make_pair("val", 1, 96, 3, regime="core")
    for key in ("fixed", "moving", "disp", "fixed_points"):
        np.testing.assert_array_equal(default[key], core[key])
    assert core["effects"] == []


def test_unknown_regime_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="regime must be one of .*patch20"):
        look_up_regime("patches")


@pytest.mark.parametrize("regime", ["patch20", "patch180", "mirror"])
def test_landmarks_and_field_agree(regime):
    """Fixed landmarks + the true field land on the moving landmarks, in the regime's own (cropped) frames."""
    pair = make_pair("val", 0, SIZE, 8, regime=regime)
    fixed, moving = pair["fixed_points"], pair["moving_points"]
    assert len(fixed) >= 20
    moved = fixed + np.stack([ndimage.map_coordinates(pair["disp"][k], fixed.T, order=1) for k in range(2)], 1)
    assert np.abs(moved - moving).max() < 0.05
    assert pair["fixed"].shape == (1, SIZE, SIZE) and pair["moving"].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("index", range(4))
def test_patch20_is_rigid_within_the_challenge_range(index):
    pair = make_pair("val", index, SIZE, 9, regime="patch20")
    linear = _linear(pair)
    np.testing.assert_allclose(linear.T @ linear, np.eye(2), atol=1e-9)  # a rotation: no scale, shear or mirror
    assert abs(np.degrees(np.arctan2(linear[1, 0], linear[0, 0]))) <= 20 + 1e-9
    assert np.abs(pair["misalignment"].params["shift_px"]).max() <= 0.10 * SIZE + 1e-9


def test_patch_shows_no_fill_and_the_moving_image_is_the_warped_view():
    """The whole moving patch lies inside the larger field of view: the fill colour never shows."""
    pair = make_pair("val", 2, SIZE, 4, regime="patch180")
    shg = pair["fixed"].astype(np.float32)
    # warping the moving patch back with the true field reproduces the view the SHG was cut from (bright field
    # resampled twice, so compared on smoothed eosin-like contrast)
    moving = torch.from_numpy(pair["moving"].astype(np.float32))[None]
    back = warp(moving, torch.from_numpy(pair["disp"])[None], padding_mode="border")[0].numpy()
    eosin = ndimage.gaussian_filter(back[0] - back[1], 2)
    shifted = ndimage.gaussian_filter(np.roll(back[0] - back[1], 9, axis=1), 2)
    smooth_shg = ndimage.gaussian_filter(np.log1p(shg[0]), 2)
    assert np.corrcoef(eosin.ravel(), smooth_shg.ravel())[0, 1] > np.corrcoef(shifted.ravel(), smooth_shg.ravel())[0, 1]
    assert pair["fill"] in (0.0, 255.0)
    corners = pair["moving"][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert not np.all(corners == pair["fill"])  # a corner of pure fill would mean the crop left the view


def test_mirror_regime_reflects():
    for index in range(3):
        assert np.linalg.det(_linear(make_pair("val", index, 96, 2, regime="mirror"))) < 0
        assert np.linalg.det(_linear(make_pair("val", index, 96, 2, regime="hard"))) > 0


def test_hard_regime_ranges():
    for index in range(6):
        params = make_pair("val", index, 96, 1, regime="hard")["misalignment"].params
        assert 0.85 <= params["scale"] <= 1.2
        assert abs(params["shear"]) <= 0.05 and 1 / 1.06 <= params["anisotropy"] <= 1.06
        assert np.abs(params["shift_px"]).max() <= 0.12 * 96 + 1e-9


def test_contrast_adjustment_and_blur_keep_uint8_images():
    rng = np.random.default_rng(0)
    shg = rng.integers(0, 60, (1, 40, 40), dtype=np.uint8)
    adjusted = adjust_contrast(shg, np.random.default_rng(1))
    assert adjusted.dtype == np.uint8 and adjusted.shape == shg.shape
    assert not np.array_equal(adjusted, shg)
    order = np.argsort(shg.ravel(), kind="stable")
    assert np.all(np.diff(adjusted.ravel()[order].astype(int)) >= 0)  # levels and gamma keep the grey order
    blurred = upsampling_blur(np.repeat(shg, 3, 0), np.random.default_rng(2))
    assert blurred.shape == (3, 40, 40) and blurred.dtype == np.uint8
    assert (
        np.abs(np.diff(blurred[0].astype(float), axis=1)).mean() < np.abs(np.diff(shg[0].astype(float), axis=1)).mean()
    )


def test_every_regime_is_reachable_from_the_command_line(tmp_path):
    assert set(REGIMES) >= {"core", "patch20", "patch180", "hard", "mirror"}
    code = fide_main(["synth", str(tmp_path / "t"), "--pairs", "1", "--size", "64", "--regime", "mirror"])
    assert code == 0
    transforms = json.loads((tmp_path / "t" / "groundtruth" / "transforms.json").read_text())
    (case,) = transforms.values()
    assert case["regime"] == "mirror" and case["mirrored"] is True


def test_decoupled_regime_shares_the_layout_but_not_the_fibre_texture():
    """The held-out real failure made synthetic: at the true pose the fibre texture scores ~0, the layout agrees."""
    from fide.prealign.fibre_texture import FibreTexture
    from fide.preprocess import prepare_pair
    from fide.preprocess.filters import layout_blur
    from fide.synth.tissue import make_aligned_pair

    def render(independent: bool, faint: bool = False):
        shg, bf, info = make_aligned_pair(320, np.random.default_rng(6), independent_texture=independent, faint=faint)
        return shg, info, prepare_pair(torch.from_numpy(shg).float(), torch.from_numpy(bf).float())

    _, coupled_info, (fixed, moving) = render(False)
    _, decoupled_info, (fixed_d, moving_d) = render(True)
    # the same draws, the stroma share bounded: a decoupled core always shows cellular regions beside its stroma
    assert decoupled_info.params["stroma_frac"] <= 0.75 < coupled_info.params["stroma_frac"]
    identity = torch.eye(3)
    assert FibreTexture(fixed.intensity, moving.intensity).score(identity) > 0.2
    assert abs(FibreTexture(fixed_d.intensity, moving_d.intensity).score(identity)) < 0.1

    def layout_correlation(prepared_fixed, prepared_moving) -> float:
        a, b = (layout_blur(image.intensity, 8.0).flatten() for image in (prepared_fixed, prepared_moving))
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert layout_correlation(fixed_d, moving_d) > 0.3  # stroma bright in SHG, pink in H&E
    faint_shg, _, _ = render(True, faint=True)
    signal = faint_shg[faint_shg > 0]
    assert np.median(signal) <= 7 and np.percentile(signal, 99) <= 40


def test_decoupled_regimes_are_whole_cores_and_challenge_patches():
    assert REGIMES["decoupled"].independent_texture and not REGIMES["decoupled"].patch
    patch = REGIMES["decoupled-patch20"]
    assert patch.independent_texture and patch.patch and patch.rotation_deg == 20.0
    pair = make_pair("val", 0, SIZE, 8, regime="decoupled-patch20")
    np.testing.assert_allclose(_linear(pair).T @ _linear(pair), np.eye(2), atol=1e-9)
