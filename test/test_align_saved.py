"""fide.load: a registration back from its fide align folder maps points and images as the one that wrote it, both
ways (forward then inverse within 0.05 px), with the original images moved away too."""

import json

import numpy as np
import pytest
import tifffile
from test_align_export import _affine, _known, _smooth

import fide
from fide.io import DatasetError

POINTS = np.array([[20.0, 30.0], [150.0, 100.0], [280.0, 200.0], [140.5, 130.25]])  # moving (x, y)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A deformable registration between TIFFs at 1 and 0.5 µm, the fixed image larger than the .tfm's 256 grid."""
    folder = tmp_path_factory.mktemp("saved")
    tifffile.imwrite(
        folder / "shg.tif",
        _smooth(240, 300, 1, 1)[..., 0].astype(np.uint8),
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )
    tifffile.imwrite(
        folder / "bf.tif",
        _smooth(260, 320, 3, 2).astype(np.uint8),
        photometric="rgb",
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    affine = _affine(angle_deg=8.0, scale=1.05, centre=(150.0, 120.0))
    reg = _known(folder / "shg.tif", folder / "bf.tif", affine, bump_px=3.0)
    reg.save(folder / "aligned", qc=False)
    return folder, reg


def test_loaded_registration_maps_like_the_one_that_wrote_it(written):
    folder, reg = written
    aligned = fide.load(folder / "aligned")
    assert aligned.deformable and np.allclose(aligned.affine, reg.affine)
    fixed_points = reg.transform_points(POINTS)
    # the .tfm holds the field on a grid of at most 256 points per side, linearly interpolated
    assert np.abs(aligned.transform_points(POINTS) - fixed_points).max() < 0.05
    for inverse in (False, True):
        there = aligned.transform_points(POINTS, inverse=inverse)
        assert np.abs(aligned.transform_points(there, inverse=not inverse) - POINTS).max() < 0.05
    warped = aligned.warp()  # the moving file reopened from the path transform.json records
    assert warped.shape == (240, 300, 3) and warped.dtype == np.uint8
    inside = (slice(60, 180), slice(80, 220))
    assert np.abs(warped[inside].astype(int) - reg.warp()[inside].astype(int)).max() <= 2
    assert aligned.fixed.pixel_size_um == pytest.approx((1.0, 1.0))
    assert aligned.moving.pixel_size_um == pytest.approx((0.5, 0.5))


def test_an_affine_folder_inverts_exactly_and_works_without_its_images(tmp_path):
    fixed, moving = _smooth(40, 50, 1, 1)[..., 0].astype(np.uint8), _smooth(60, 70, 3, 2).astype(np.uint8)
    reg = _known(fixed, moving, _affine())
    reg.save(tmp_path / "out", qc=False)
    aligned = fide.load(tmp_path / "out")
    assert not aligned.deformable
    assert np.abs(aligned.transform_points(aligned.transform_points(POINTS), inverse=True) - POINTS).max() < 1e-9
    assert np.allclose(aligned.warp_points(POINTS[:, ::-1]), reg.warp_points(POINTS[:, ::-1]))
    with pytest.raises(DatasetError, match="the moving image is not there"):
        aligned.warp()
    assert np.array_equal(aligned.warp(moving), reg.warp(moving))  # arrays were registered: pass them in


def test_bad_folders_fail_with_one_line(tmp_path):
    with pytest.raises(DatasetError, match="not a fide align output folder"):
        fide.load(tmp_path)
    (tmp_path / "transform.json").write_text("{")
    (tmp_path / "transform.tfm").write_text("nonsense")
    with pytest.raises(DatasetError, match="transform.json: cannot read"):
        fide.load(tmp_path)
    frame = {"origin": [0, 0], "spacing": [1, 1], "direction": [1, 0, 0, 1]}
    description = {"physical": {"fixed_frame": frame, "moving_frame": frame}, "pixel": {}}
    (tmp_path / "transform.json").write_text(json.dumps(description))
    with pytest.raises(DatasetError, match="transform.tfm: cannot read the transform"):
        fide.load(tmp_path)
