"""fide.align.export: transform.tfm in SimpleITK's physical spaces reproduces fide's warped image; the JSON,
the field and the inverse agree with it. Registrations here are built from known maps (no search)."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch

from fide import geometry
from fide.align.registration import Registration
from fide.align.source import open_source, working_image
from fide.io import read_disp

RNG = np.random.default_rng(0)


def _smooth(rows, cols, channels, seed):
    noise = np.random.default_rng(seed).random((rows // 8 + 2, cols // 8 + 2, channels))
    image = torch.nn.functional.interpolate(
        torch.from_numpy(noise).permute(2, 0, 1)[None], size=(rows, cols), mode="bicubic", align_corners=True
    )
    return (image[0].permute(1, 2, 0).numpy() * 200 + 20).astype(np.float32)


def _known(fixed_path, moving_path, affine_xy, bump_px=0.0):
    """A Registration with a given full-resolution pixel affine (and an optional smooth residual bump)."""
    fixed, moving = open_source(fixed_path, None, "fixed"), open_source(moving_path, None, "moving")
    work_f, work_m = working_image(fixed, fixed.shape), working_image(moving, moving.shape)
    affine = torch.as_tensor(affine_xy, dtype=torch.float64)
    disp = geometry.affine_to_disp(affine[None].float(), fixed.shape)
    if bump_px:
        grid = geometry.identity_grid(fixed.shape)
        centre = torch.tensor([s / 2 for s in fixed.shape]).view(2, 1, 1)
        disp = disp + bump_px * torch.exp(-((grid - centre) ** 2).sum(0) / (2 * 12.0**2))[None, None]
    return Registration(
        fixed, moving, affine.numpy(), 0.5, 0.9, False, bump_px != 0, False, [], 0.0, work_f, work_m, disp
    )


def _affine(angle_deg=12.0, scale=1.1, shift=(4.0, -3.0), centre=(20.0, 15.0)):
    return (
        geometry.similarity_matrix(
            torch.tensor([np.radians(angle_deg)]),
            torch.tensor([scale]),
            torch.tensor(centre),
            torch.tensor(centre) + torch.tensor(shift),
        )[0]
        .double()
        .numpy()
    )


def _inside(reg, inverse=False):
    """(rows, columns) mask of target pixels that map at least a pixel inside the source image (no edge effects)."""
    target, source = (reg.moving, reg.fixed) if inverse else (reg.fixed, reg.moving)
    cols, rows = target.shape
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), -1).reshape(-1, 2).astype(np.float64)
    mapped = reg.warp_points(grid, inverse=inverse)
    ok = (mapped >= 1).all(1) & (mapped[:, 0] <= source.shape[0] - 2) & (mapped[:, 1] <= source.shape[1] - 2)
    return ok.reshape(rows, cols)


def _mha(path, picture, spacing, origin, direction):
    image = sitk.GetImageFromArray(picture, isVector=picture.ndim == 3)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("deformable", [False, True])
def test_tfm_resampling_reproduces_fides_warped_image_with_anisotropic_frames(tmp_path, deformable):
    """Anisotropic 2:1 spacing, origins and a rotated direction in both files: the classic physical-space bug."""
    fixed = _mha(tmp_path / "fixed.mha", _smooth(40, 48, 1, 1)[..., 0], (0.002, 0.001), (5.0, -3.0), (0, -1, 1, 0))
    moving = _mha(tmp_path / "moving.mha", _smooth(50, 44, 3, 2), (0.001, 0.001), (-1.0, 2.0), (1, 0, 0, 1))
    reg = _known(fixed, moving, _affine(), bump_px=2.0 if deformable else 0.0)
    written = reg.save(tmp_path / "out", qc=False)
    transform = sitk.ReadTransform(str(written["tfm"]))
    assert ("CompositeTransform" in transform.GetName()) == deformable
    resampled = sitk.GetArrayFromImage(
        sitk.Resample(sitk.ReadImage(str(moving)), sitk.ReadImage(str(fixed)), transform)
    )
    ours = sitk.ReadImage(str(written["moving_warped"]))
    assert ours.GetSpacing() == (0.002, 0.001) and ours.GetOrigin() == (5.0, -3.0)
    inside = _inside(reg)
    diff = np.abs(resampled - sitk.GetArrayFromImage(ours))[inside]
    assert inside.mean() > 0.5 and diff.max() < 0.05


def test_tfm_round_trip_on_tiffs_and_json_field_and_inverse(tmp_path):
    """uint8 RGB / grey TIFFs at 1 and 0.5 µm: sitk.Resample with the .tfm equals moving_warped (±1 grey level);
    the JSON's matrices, disp.nii.gz and fixed_warped agree with the same map."""
    shg = _smooth(36, 44, 1, 3)[..., 0].astype(np.uint8)
    bf = _smooth(80, 72, 3, 4).astype(np.uint8)
    tifffile.imwrite(tmp_path / "shg.tif", shg, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "bf one.tif", bf, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    affine = np.diag([2.0, 2.0, 1.0]) @ _affine(angle_deg=-8.0, scale=1.0)  # 0.5 µm moving pixels: twice as many
    reg = _known(tmp_path / "shg.tif", tmp_path / "bf one.tif", affine)
    written = reg.save(tmp_path / "out", inverse=True, qc=False)
    assert written["moving_warped"].name == "moving_warped.ome.tif"
    fixed_img, moving_img = sitk.ReadImage(str(tmp_path / "shg.tif")), sitk.ReadImage(str(tmp_path / "bf one.tif"))
    transform = sitk.ReadTransform(str(written["tfm"]))
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving_img, fixed_img, transform)).astype(int)
    ours = tifffile.imread(written["moving_warped"]).astype(int)
    assert ours.shape == (36, 44, 3)
    inside = _inside(reg)
    close = np.abs(resampled - ours)[inside] <= 1  # ITK truncates to uint8, fide rounds
    assert inside.mean() > 0.5 and close.mean() > 0.99
    description = json.loads(written["json"].read_text())
    assert np.allclose(description["pixel"]["matrix"], affine)
    physical = np.array(description["physical"]["matrix"])
    point = fixed_img.TransformContinuousIndexToPhysicalPoint((10.0, 7.0))
    assert np.allclose(transform.TransformPoint(point), (physical @ [*point, 1])[:2])
    assert description["physical"]["fixed_frame"]["spacing"] == pytest.approx([0.001, 0.001])
    disp = read_disp(written["disp"])  # (2, X, Y), fixed to moving, pixels
    assert disp.shape == (2, 44, 36)
    assert np.allclose(disp[:, 10, 7].numpy(), (affine @ [10, 7, 1])[:2] - [10, 7], atol=1e-4)
    back = sitk.Resample(fixed_img, moving_img, transform.GetInverse())
    fixed_warped = tifffile.imread(written["fixed_warped"]).astype(int)
    assert fixed_warped.shape == (80, 72)
    inside = _inside(reg, inverse=True)
    agree = np.abs(sitk.GetArrayFromImage(back).astype(int) - fixed_warped)[inside] <= 1
    assert inside.mean() > 0.2 and agree.mean() > 0.99


def test_png_and_nifti_outputs_stay_in_their_family(tmp_path):
    import nibabel as nib

    sitk.WriteImage(
        sitk.GetImageFromArray(_smooth(32, 32, 3, 5).astype(np.uint8), isVector=True), str(tmp_path / "m.png")
    )
    nib.save(nib.Nifti1Image(_smooth(32, 32, 1, 6).astype(np.uint8), np.eye(4)), tmp_path / "f.nii.gz")  # (X, Y, 1)
    reg = _known(tmp_path / "f.nii.gz", tmp_path / "m.png", _affine())
    written = reg.save(tmp_path / "out", inverse=True, qc=True)
    assert (
        written["moving_warped"].name == "moving_warped.png" and written["fixed_warped"].name == "fixed_warped.nii.gz"
    )
    assert written["qc"].stat().st_size > 0
    description = json.loads(written["json"].read_text())
    assert any("2D" in note for note in description["notes"])  # the NIfTI is 3D (size-1 axis), the PNG 2D


def test_deformable_map_follows_the_working_field_and_inverts(tmp_path):
    fixed = _mha(tmp_path / "f.mha", _smooth(40, 48, 1, 1)[..., 0], (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    moving = _mha(tmp_path / "m.mha", _smooth(50, 44, 3, 2), (1.0, 1.0), (0.0, 0.0), (1, 0, 0, 1))
    reg = _known(fixed, moving, _affine(), bump_px=2.0)
    points = np.array([[24.0, 20.0], [10.0, 30.0], [40.0, 5.0]])  # (x, y); (24, 20) is the bump's centre
    expected = reg.working_disp[0, :, points[:, 0].astype(int), points[:, 1].astype(int)].T.numpy() + points
    assert np.abs(reg.warp_points(points) - expected).max() < 1e-4
    assert np.abs(reg.warp_points(reg.warp_points(points), inverse=True) - points).max() < 1e-3


def test_streamed_bands_and_tiles_give_the_same_image_as_one_piece(tmp_path, monkeypatch):
    """Bands and TIFF tiles of 16 px and resampling tiles of 16 columns (a 20 000² image streams the same way)
    change no pixel."""
    from fide.align import export, resample

    tifffile.imwrite(tmp_path / "f.tif", _smooth(40, 50, 1, 1)[..., 0].astype(np.uint8))
    tifffile.imwrite(tmp_path / "m.tif", _smooth(60, 70, 3, 2).astype(np.uint16), photometric="rgb")
    reg = _known(tmp_path / "f.tif", tmp_path / "m.tif", _affine(angle_deg=35.0), bump_px=1.5)
    whole = reg.save(tmp_path / "whole", qc=False)
    monkeypatch.setattr(export, "_TILE_PX", 16)
    monkeypatch.setattr(resample, "_TILE_PX", 16)
    pieces = reg.save(tmp_path / "pieces", qc=False)
    one, many = tifffile.imread(whole["moving_warped"]), tifffile.imread(pieces["moving_warped"])
    assert one.dtype == np.uint16 and one.shape == (40, 50, 3) and np.array_equal(one, many)
    with tifffile.TiffFile(pieces["moving_warped"]) as tif:
        assert tif.pages[0].tilewidth == 16 and tif.pages[0].tilelength == 16
