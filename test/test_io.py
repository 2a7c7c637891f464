"""Learn2Reg I/O: descriptor validation, image layouts, fields, landmarks and their one-line errors."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from fide.io import DatasetError, load_dataset, read_disp, read_image, read_landmark_pair, write_disp


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


def _task(tmp_path, pairs=1, **extra):
    rng = np.random.default_rng(0)
    entries = []
    for k in range(1, pairs + 1):
        _save(tmp_path / f"imagesTr/T_{k:04d}_0000.nii.gz", rng.integers(0, 255, (12, 9, 1), dtype=np.uint8))
        _save(tmp_path / f"imagesTr/T_{k:04d}_0001.nii.gz", rng.integers(0, 255, (12, 9, 1, 3), dtype=np.uint8))
        entries.append({"fixed": f"./imagesTr/T_{k:04d}_0000.nii.gz", "moving": f"./imagesTr/T_{k:04d}_0001.nii.gz"})
    descriptor = {"name": "T", "registration_val": entries, **extra}
    path = tmp_path / "T_dataset.json"
    path.write_text(json.dumps(descriptor))
    return path


def test_load_dataset_pairs_and_names(tmp_path):
    dataset = load_dataset(_task(tmp_path, pairs=2))
    pairs = dataset.split("val")
    assert [p.disp_name for p in pairs] == ["disp_0001_0001.nii.gz", "disp_0002_0002.nii.gz"]
    assert pairs[0].name == "0001_0000<--0001_0001"
    assert dataset.default_split() == "val" and dataset.split("test") == []
    fixed_csv, moving_csv = pairs[0].landmarks()
    assert fixed_csv == tmp_path / "landmarksTr/T_0001_0000.csv" and moving_csv.name == "T_0001_0001.csv"


def test_a_folder_stands_for_the_one_descriptor_under_it(tmp_path):
    path = _task(tmp_path / "task")
    assert load_dataset(tmp_path).path == path.resolve()  # found below the folder given, as the entry point does
    with pytest.raises(DatasetError, match="no \\*_dataset.json descriptor found"):
        load_dataset(tmp_path / "task" / "imagesTr")
    (tmp_path / "Other_dataset.json").write_text("{}")
    with pytest.raises(DatasetError, match="2 descriptors found .*Other_dataset.json.*T_dataset.json.*; give the"):
        load_dataset(tmp_path)


def test_missing_key_in_pair_names_descriptor_and_key(tmp_path):
    path = tmp_path / "T_dataset.json"
    path.write_text(json.dumps({"registration_val": [{"fixed": "./imagesTr/a_0001_0000.nii.gz"}]}))
    with pytest.raises(DatasetError, match=r"T_dataset.json: registration_val\[0\].moving"):
        load_dataset(path)


def test_pair_naming_missing_file(tmp_path):
    path = _task(tmp_path)
    (tmp_path / "imagesTr/T_0001_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match="names a missing file.*T_0001_0001.nii.gz"):
        load_dataset(path)


def test_wrong_type_of_pair_list(tmp_path):
    path = tmp_path / "T_dataset.json"
    path.write_text(json.dumps({"registration_val": {"fixed": "x"}}))
    with pytest.raises(DatasetError, match="registration_val must be a list"):
        load_dataset(path)


@pytest.mark.parametrize(
    "shape,channels",
    [((12, 9), 1), ((12, 9, 1), 1), ((12, 9, 3), 3), ((12, 9, 1, 3), 3), ((12, 9, 1, 1, 3), 3)],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int16])
def test_read_image_layouts_keep_nibabel_axis_order(tmp_path, shape, channels, dtype):
    array = np.random.default_rng(1).integers(0, 200, shape).astype(dtype)
    image = read_image(_save(tmp_path / "img_0001_0000.nii.gz", array))
    assert image.shape == (channels, 12, 9) and image.dtype == torch.float32
    expected = array.reshape(12, 9, channels).astype(np.float32)
    assert np.array_equal(image.numpy().transpose(1, 2, 0), expected)


def test_read_rgb_vector_pixels(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (12, 9, 3), dtype=np.uint8)
    path = tmp_path / "rgb_0001_0001.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb.transpose(1, 0, 2)), isVector=True), str(path))
    assert np.array_equal(read_image(path).numpy().transpose(1, 2, 0), rgb.astype(np.float32))


def test_image_with_four_channels_is_read_as_rgba(tmp_path):
    """Issue 14: RGBA is read (was refused); a fully transparent image is bright-field background."""
    path = _save(tmp_path / "x_0001_0001.nii.gz", np.zeros((8, 8, 1, 4), np.uint8))
    assert torch.equal(read_image(path), torch.full((3, 8, 8), 255.0))


def test_nan_pixels_are_rejected(tmp_path):
    array = np.ones((8, 8), np.float32)
    array[2, 3] = np.nan
    with pytest.raises(DatasetError, match="NaN"):
        read_image(_save(tmp_path / "n_0001_0000.nii.gz", array))


def test_corrupt_file_is_one_line_error(tmp_path):
    path = tmp_path / "c_0001_0000.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DatasetError) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_write_disp_layout_affine_and_atomicity(tmp_path):
    disp = torch.randn(2, 7, 5)
    path = write_disp(tmp_path / "out/disp_0001_0001.nii.gz", disp)
    image = nib.load(str(path))
    assert image.shape == (7, 5, 1, 2) and image.get_data_dtype() == np.float32
    assert np.allclose(image.affine, np.eye(4))
    assert np.allclose(image.get_fdata()[:, :, 0, 0], disp[0].numpy(), atol=1e-6)
    assert np.allclose(image.get_fdata()[:, :, 0, 1], disp[1].numpy(), atol=1e-6)
    assert sorted(p.name for p in path.parent.iterdir()) == ["disp_0001_0001.nii.gz"]
    assert torch.allclose(read_disp(path, (7, 5)), disp)
    with pytest.raises(DatasetError, match=r"expected a field of shape \(8, 5, 1, 2\), found \(7, 5, 1, 2\)"):
        read_disp(path, (8, 5))


def test_write_disp_refuses_nan(tmp_path):
    disp = torch.zeros(2, 4, 4)
    disp[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        write_disp(tmp_path / "d.nii.gz", disp)
    assert not list(tmp_path.iterdir())


def test_landmark_count_mismatch(tmp_path):
    fixed, moving = tmp_path / "f.csv", tmp_path / "m.csv"
    np.savetxt(fixed, np.ones((5, 2)), delimiter=",")
    np.savetxt(moving, np.c_[np.ones((4, 2)), np.zeros(4)], delimiter=",")
    with pytest.raises(DatasetError, match="m.csv: has 4 landmarks but .*f.csv has 5"):
        read_landmark_pair(fixed, moving)


def test_landmarks_drop_zero_third_column(tmp_path):
    path = tmp_path / "l.csv"
    np.savetxt(path, np.array([[1.5, 2.5, 0.0], [3.0, 4.0, 0.0]]), delimiter=",")
    fixed, moving = read_landmark_pair(path, path)
    assert fixed.shape == (2, 2) and fixed[1, 1] == 4.0


def test_truncated_field_is_an_error(tmp_path):
    path = write_disp(tmp_path / "disp_0001_0001.nii.gz", torch.randn(2, 64, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated"):
        read_disp(path)


def test_complex_pixels_are_rejected(tmp_path):
    path = _save(tmp_path / "k_0001_0000.nii.gz", np.full((8, 8), 3 + 4j, np.complex64))  # would read as 3.0
    with pytest.raises(DatasetError, match=r"k_0001_0000.nii.gz: pixels are complex64, expected real grey or RGB"):
        read_image(path)


def test_bool_pixels_are_rejected(tmp_path, monkeypatch):
    """NIfTI cannot store bool, but a 1-bit TIFF read by tifffile is bool: a mask, not an intensity image."""
    import fide.io.images as images

    monkeypatch.setattr(images, "_read_array", lambda path: np.ones((8, 8), bool))
    with pytest.raises(DatasetError, match=r"m_0001_0000.tif: pixels are bool, expected real grey or RGB"):
        read_image(tmp_path / "m_0001_0000.tif")


@pytest.mark.parametrize(
    "where", ["../outside/T_0001_0000.nii.gz", "./imagesTr/../../T_0001_0000.nii.gz", "/etc/T_0001_0000.nii.gz"]
)
def test_descriptor_paths_that_leave_the_task_folder_are_refused(tmp_path, where):
    path = _task(tmp_path / "task")
    raw = json.loads(path.read_text())
    raw["registration_val"][0]["fixed"] = where
    path.write_text(json.dumps(raw))
    with pytest.raises(DatasetError, match=r"registration_val\[0\]\.fixed: .* leaves the task folder"):
        load_dataset(path, check_files=False)


def test_a_symlinked_images_folder_stays_allowed(tmp_path):
    path = _task(tmp_path / "task")
    (tmp_path / "task" / "imagesTr").rename(tmp_path / "store")
    (tmp_path / "task" / "imagesTr").symlink_to(tmp_path / "store")
    assert read_image(load_dataset(path).split("val")[0].fixed).shape == (1, 12, 9)


def test_rgba_opaque_alpha_is_dropped_and_real_alpha_composited_on_background(tmp_path):
    """An RGBA bright field is no longer refused: opaque alpha dropped, transparent pixels become white."""
    import tifffile

    rgb = np.random.default_rng(0).integers(0, 200, (6, 5, 3), dtype=np.uint8)
    opaque = np.concatenate([rgb, np.full((6, 5, 1), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "opaque.tif", opaque, photometric="rgb", extrasamples=["unassalpha"])
    image = read_image(tmp_path / "opaque.tif")
    assert image.shape == (3, 5, 6) and torch.equal(image, torch.from_numpy(rgb.transpose(2, 1, 0)).float())
    holed = opaque.copy()
    holed[0, 0, 3] = 0  # row 0, column 0 transparent
    holed[1, 2, 3] = 51  # 20 % opaque
    tifffile.imwrite(tmp_path / "holed.tif", holed, photometric="rgb", extrasamples=["unassalpha"])
    image = read_image(tmp_path / "holed.tif")
    assert torch.equal(image[:, 0, 0], torch.full((3,), 255.0))
    expected = 0.2 * torch.from_numpy(rgb[1, 2]).float() + 0.8 * 255
    assert torch.allclose(image[:, 2, 1], expected, atol=1e-3)  # x = column 2, y = row 1
    assert torch.equal(image[:, 1, 0], torch.from_numpy(rgb[0, 1]).float())


def test_grey_alpha_composites_on_black_and_five_channels_are_refused(tmp_path):
    grey = np.stack([np.full((4, 4), 100, np.uint8), np.zeros((4, 4), np.uint8)], -1)
    _save(tmp_path / "ga.nii.gz", grey[:, :, None, :])
    assert float(read_image(tmp_path / "ga.nii.gz").max()) == 0.0
    _save(tmp_path / "five.nii.gz", np.zeros((4, 4, 1, 5), np.uint8))
    with pytest.raises(DatasetError, match="5 channels"):
        read_image(tmp_path / "five.nii.gz")
