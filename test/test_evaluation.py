"""Tests for the standalone Learn2Reg evaluator (evaluation/): metrics, file handling, JSON layout and CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from evaluation.evaluation import cases_table, evaluate, format_table, load_config, make_config, write_outputs
from evaluation.inputs import load_landmarks, normalise_disp, pair_ids
from evaluation.metrics import (
    aggregate,
    compute_tre,
    jacobian_determinant_2d,
    jacobian_determinant_3d,
    num_foldings,
    num_foldings_l2r,
    sdlogj,
    sdlogj_l2r,
)

SCRIPT = Path(__file__).resolve().parents[1] / "evaluation" / "evaluation.py"
TASK = "MINI"


# ------------------------------------------------------------------------------------------- upstream references
def upstream_compute_tre(fix_lms, mov_lms, disp, spacing_fix, spacing_mov):
    """L2R utils.compute_tre (eval_version 2.0), re-implemented from its formula: 3D, 3 components."""
    disp_at_fix = np.array([ndimage.map_coordinates(disp[:, :, :, k], fix_lms.transpose()) for k in range(3)]).T
    return np.linalg.norm((fix_lms + disp_at_fix - mov_lms) * spacing_mov, axis=1)


def upstream_jacobian_determinant(disp):
    """L2R utils.jacobian_determinant re-implemented from its formula: disp (1, 3, X, Y, Z)."""
    kernels = [np.array([-0.5, 0, 0.5]).reshape(s) for s in ((1, 3, 1, 1), (1, 1, 3, 1), (1, 1, 1, 3))]
    grad = np.concatenate(
        [
            np.stack([ndimage.correlate(disp[:, c], k, mode="constant", cval=0.0) for c in range(3)], axis=1)
            for k in kernels
        ],
        0,
    )
    j = (grad + np.eye(3).reshape(3, 3, 1, 1, 1))[:, :, 2:-2, 2:-2, 2:-2]
    return (
        j[0, 0] * (j[1, 1] * j[2, 2] - j[1, 2] * j[2, 1])
        - j[1, 0] * (j[0, 1] * j[2, 2] - j[0, 2] * j[2, 1])
        + j[2, 0] * (j[0, 1] * j[1, 2] - j[0, 2] * j[1, 1])
    )


# ------------------------------------------------------------------------------------------------------ helpers
def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"), axis=-1)


def _interior_lms(rng, shape, n=8, margin=12):
    return np.stack([rng.uniform(margin, s - 1 - margin, n) for s in shape], axis=1)


def _save_nifti(path, array, zooms=(1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([*zooms, 1.0, 1.0][:3] + [1.0])), path)


def _make_task(root, shapes=((40, 48), (38, 44)), zooms_mov=(1.0, 1.0), with_landmarks=True, seed=0):
    """Mini 2D task: pair k has fixed shape shapes[k]; moving landmarks = fixed + shift_k. Returns the shifts."""
    rng = np.random.default_rng(seed)
    pairs, shifts = [], []
    for k, shape in enumerate(shapes, start=1):
        fixed, moving = f"./imagesTr/{TASK}_{k:04d}_0000.nii.gz", f"./imagesTr/{TASK}_{k:04d}_0001.nii.gz"
        _save_nifti(root / fixed, np.zeros(shape, np.uint8))
        _save_nifti(root / moving, np.zeros(shape, np.uint8), zooms_mov)
        shift = rng.uniform(-5, 5, 2)
        if with_landmarks:
            fix_lms = _interior_lms(rng, shape)
            (root / "landmarksTr").mkdir(exist_ok=True)
            np.savetxt(root / fixed.replace("images", "landmarks").replace(".nii.gz", ".csv"), fix_lms, delimiter=",")
            np.savetxt(
                root / moving.replace("images", "landmarks").replace(".nii.gz", ".csv"), fix_lms + shift, delimiter=","
            )
        pairs.append({"fixed": fixed, "moving": moving})
        shifts.append(shift)
    descriptor = {
        "name": TASK,
        "tensorImageSize": {"0": "2D"},
        "tensorImageShape": {"0": [*shapes[0], 1]},
        "registration_val": pairs,
        "registration_test": [],
    }
    (root / f"{TASK}_dataset.json").write_text(json.dumps(descriptor))
    return shifts


def _write_constant_fields(disp_dir, shapes, vectors):
    disp_dir.mkdir(parents=True, exist_ok=True)
    for k, (shape, vec) in enumerate(zip(shapes, vectors), start=1):
        _save_nifti(disp_dir / f"disp_{k:04d}_{k:04d}.nii.gz", np.broadcast_to(vec, (*shape, 1, 2)).astype(np.float32))


# --------------------------------------------------------------------------------------------------------- TRE
def test_tre_constant_and_affine_fields_are_exact():
    rng = np.random.default_rng(1)
    shape = (64, 72)
    fix = _interior_lms(rng, shape, n=20, margin=20)
    shift = np.array([3.25, -7.5])
    assert np.allclose(compute_tre(fix, fix + shift, np.broadcast_to(shift, (*shape, 2))), 0.0, atol=1e-12)

    # moving = A fixed + t  <=>  u(p) = (A - I) p + t; cubic B-splines reproduce a linear field in the interior.
    a, t = np.array([[1.05, 0.1], [-0.08, 0.97]]), np.array([2.0, -3.0])
    disp = _grid(shape) @ (a - np.eye(2)).T + t
    assert np.allclose(compute_tre(fix, fix @ a.T + t, disp), 0.0, atol=1e-8)


def test_tre_half_way_and_swapped_axes():
    rng = np.random.default_rng(2)
    shape = (40, 48)
    fix = _interior_lms(rng, shape)
    shift = np.array([10.0, -4.0])
    half = compute_tre(fix, fix + shift, np.broadcast_to(shift / 2, (*shape, 2)))
    np.testing.assert_allclose(half, np.linalg.norm(shift) / 2, rtol=1e-12)
    # Components written in (x, y) = (column, row) order instead of array order: a large error, |(-14, 14)|.
    swapped = compute_tre(fix, fix + shift, np.broadcast_to(shift[::-1], (*shape, 2)))
    np.testing.assert_allclose(swapped, np.hypot(14.0, 14.0), rtol=1e-12)


def test_tre_moving_spacing_scales():
    rng = np.random.default_rng(3)
    fix = _interior_lms(rng, (32, 32))
    disp = np.zeros((32, 32, 2))
    tre1 = compute_tre(fix, fix + [3.0, 4.0], disp, (1.0, 1.0))
    np.testing.assert_allclose(tre1, 5.0)
    np.testing.assert_allclose(compute_tre(fix, fix + [3.0, 4.0], disp, (2.0, 2.0)), 2 * tre1)


def test_tre_2d_equals_upstream_3d_on_padded_field():
    """Regression: the 2D path equals upstream compute_tre on the field padded to (H, W, 1, 3) with z = 0."""
    rng = np.random.default_rng(4)
    shape = (30, 37)
    disp = ndimage.gaussian_filter(rng.normal(scale=20, size=(*shape, 2)), (3, 3, 0))
    fix = np.concatenate([rng.uniform(0, 29, (40, 2)), [[0, 0], [29, 36], [-0.5, 10], [15, 37.2]]])  # borders too
    mov = fix + rng.normal(scale=3, size=fix.shape)
    spacing = (np.float32(0.7), np.float32(1.3), np.float32(1.0))

    padded = np.zeros((*shape, 1, 3))
    padded[:, :, 0, :2] = disp
    pad_lms = np.c_[fix, np.zeros(len(fix))], np.c_[mov, np.zeros(len(mov))]
    expected = upstream_compute_tre(*pad_lms, padded, (1.0, 1.0, 1.0), spacing)
    # Equal up to float rounding of the cubic weights along the size-1 axis (~1e-15 px).
    np.testing.assert_allclose(compute_tre(fix, mov, disp, spacing[:2]), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(compute_tre(*pad_lms, padded[:, :, :, :], spacing), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- Jacobian/SDlogJ
def test_linear_field_det_sdlogj_and_foldings():
    shape = (20, 24)
    grid = _grid(shape)
    a, b = 0.3, -0.2
    jac = jacobian_determinant_2d(grid * [a, b])  # u = (a i, b j)
    assert jac.shape == (16, 20)
    np.testing.assert_allclose(jac, (1 + a) * (1 + b), rtol=1e-12)
    assert sdlogj(jac) == pytest.approx(0.0, abs=1e-12)
    assert sdlogj_l2r(jac) == pytest.approx(0.0, abs=1e-12)
    assert num_foldings(jac) == 0

    folded = jacobian_determinant_2d(grid * [-1.5, 0.0])  # det = -0.5 everywhere: every voxel folded
    assert num_foldings(folded) == folded.size
    assert num_foldings_l2r(folded) == 0  # upstream counts on clip(det + 3) >= 1e-9: never a fold


def test_nonlinear_field_det():
    shape = (16, 18)
    i, j = _grid(shape)[..., 0], _grid(shape)[..., 1]
    alpha, beta = 0.01, 0.02
    disp = np.stack([alpha * j**2, beta * i**2], axis=-1)  # central differences of squares are exact
    jac = jacobian_determinant_2d(disp)
    expected = (1 - 4 * alpha * beta * i * j)[2:-2, 2:-2]
    np.testing.assert_allclose(jac, expected, rtol=1e-12)
    assert sdlogj(jac) == pytest.approx(np.log(expected).std(), rel=1e-12)
    assert sdlogj_l2r(jac) == pytest.approx(np.log(expected + 3).std(), rel=1e-12)
    assert sdlogj_l2r(jac) < sdlogj(jac)  # the +3 shrinks the metric


def test_jacobian_3d_matches_upstream():
    rng = np.random.default_rng(5)
    disp = ndimage.gaussian_filter(rng.normal(scale=3, size=(10, 11, 12, 3)), (1, 1, 1, 0))
    upstream = upstream_jacobian_determinant(disp.transpose(3, 0, 1, 2)[np.newaxis])
    np.testing.assert_array_equal(jacobian_determinant_3d(disp), upstream)
    # 2D field embedded in 3D (u_z = 0, no z dependence): same det as the 2D path.
    disp2 = disp[:, :, 0, :2]
    embedded = np.zeros((10, 11, 12, 3))
    embedded[..., :2] = disp2[:, :, None, :]
    np.testing.assert_allclose(jacobian_determinant_3d(embedded)[:, :, 0], jacobian_determinant_2d(disp2), rtol=1e-12)


def test_aggregate_quantiles():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert aggregate(values, "tre") == {
        "mean": 4.0,
        "std": float(np.std(values)),
        "30": float(np.quantile(values, 0.7)),
    }
    assert aggregate(values, "dice")["30"] == float(np.quantile(values, 0.3))
    with pytest.raises(ValueError, match="metric"):
        aggregate(values, "mse")


# ------------------------------------------------------------------------------------------------ file handling
def test_pair_ids_match_upstream_slices():
    path = "./imagesTr/COMULISSHGBF_0011_0001.nii.gz"
    assert pair_ids(path) == (path[-16:-12], path[-11:-7]) == ("0011", "0001")
    with pytest.raises(ValueError, match="_<CASE4>_<MOD4>"):
        pair_ids("./imagesTr/bad.nii.gz")


def test_normalise_disp_layouts_and_wrong_shape():
    u = np.random.default_rng(6).normal(size=(5, 7, 2))
    for stored in (u[:, :, None, :], u, np.moveaxis(u, -1, 0)):
        np.testing.assert_array_equal(normalise_disp(stored, (5, 7)), u)
    with pytest.raises(ValueError, match=r"disp_x: expected shape 5x7x1x2 .* found 7x5x1x2"):
        normalise_disp(np.zeros((7, 5, 1, 2)), (5, 7), name="disp_x")


def test_landmark_columns(tmp_path):
    np.savetxt(tmp_path / "z0.csv", [[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]], delimiter=",")
    np.testing.assert_array_equal(load_landmarks(tmp_path / "z0.csv", 2), [[1, 2], [3, 4]])
    np.savetxt(tmp_path / "z1.csv", [[1.0, 2.0, 1.0]], delimiter=",")
    with pytest.raises(ValueError, match="expected 2 columns"):
        load_landmarks(tmp_path / "z1.csv", 2)


# ---------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_json_layout_and_per_pair_shapes(tmp_path):
    shapes = ((40, 48), (38, 44))  # pairs of one task with different sizes
    shifts = _make_task(tmp_path / "task", shapes)
    config = make_config(tmp_path / "task" / f"{TASK}_dataset.json")
    assert config["expected_shape"] == [40, 48, 1, 2]
    assert [m["name"] for m in config["evaluation_methods"]] == ["TRE_lm", "LogJacDetStd"]
    _write_constant_fields(tmp_path / "disp", shapes, [shifts[0], np.zeros(2)])

    result = evaluate(tmp_path / "disp", tmp_path / "task", config)
    assert list(result) == ["name", "aggregates", "cases", "eval_version"]
    assert result["name"] == TASK and result["eval_version"] == "2.0"
    assert list(result["cases"]) == ["0001_0000<--0001_0001", "0002_0000<--0002_0001"]
    case1, case2 = result["cases"].values()
    assert set(case1) == {"TRE_lm", "LogJacDetStd", "num_foldings", "LogJacDetStd_l2r", "num_foldings_l2r"}
    assert len(case1["TRE_lm"]["detailed"]) == 8 and case1["TRE_lm"]["mean"] == pytest.approx(
        0.0, abs=1e-6
    )  # float32 field
    assert case2["TRE_lm"]["mean"] == pytest.approx(np.linalg.norm(shifts[1]))
    assert case1["LogJacDetStd"] == {"mean": 0.0, "detailed": 0.0}
    assert set(result["aggregates"]) == {"TRE_lm", "LogJacDetStd", "LogJacDetStd_l2r"}  # no num_foldings, as upstream
    tre_means = [c["TRE_lm"]["mean"] for c in result["cases"].values()]
    assert result["aggregates"]["TRE_lm"] == aggregate(tre_means, "tre")

    json_path, csv_path = write_outputs(result, tmp_path / "out.json", tmp_path / "out.csv")
    assert json.loads(json_path.read_text()) == result
    assert list(cases_table(result).columns) == list(case1)
    assert "TRE_lm" in csv_path.read_text() and "0002_0000<--0002_0001" in format_table(result)


def test_evaluate_file_formats_and_spacing(tmp_path):
    shapes = ((40, 48),)
    shifts = _make_task(tmp_path / "task", shapes, zooms_mov=(2.0, 2.0))
    config = make_config(tmp_path / "task" / f"{TASK}_dataset.json")
    disp_dir = tmp_path / "disp"
    disp_dir.mkdir()
    # Long-form name and (2, H, W) npz; a wrong .nii.gz alongside must be ignored (.npz is tried first).
    np.savez(disp_dir / "disp_0001_0000_0001_0001.npz", np.zeros((2, *shapes[0])))
    _save_nifti(disp_dir / "disp_0001_0000_0001_0001.nii.gz", np.zeros((3, 3, 1, 2), np.float32))
    result = evaluate(disp_dir, tmp_path / "task", config)
    assert result["cases"]["0001_0000<--0001_0001"]["TRE_lm"]["mean"] == pytest.approx(2 * np.linalg.norm(shifts[0]))

    np.savez(disp_dir / "disp_0001_0000_0001_0001.npz", a=np.zeros((2, *shapes[0])), b=np.zeros(1))
    with pytest.raises(ValueError, match="exactly one array"):
        evaluate(disp_dir, tmp_path / "task", config)


def test_evaluate_errors(tmp_path):
    shapes = ((40, 48), (38, 44))
    _make_task(tmp_path / "task", shapes)
    config = make_config(tmp_path / "task" / f"{TASK}_dataset.json")
    disp_dir = tmp_path / "disp"
    disp_dir.mkdir()
    with pytest.raises(ValueError, match=r"Missing files: .*disp_0001_0000_0001_0001 \(or disp_0001_0001\).*disp_0002"):
        evaluate(disp_dir, tmp_path / "task", config)

    _write_constant_fields(disp_dir, [(40, 48), (40, 48)], [np.zeros(2)] * 2)  # pair 2's fixed image is 38x44
    with pytest.raises(ValueError, match=r"disp_0002_0002.nii.gz .*expected shape 38x44x1x2 .*found 40x48x1x2"):
        evaluate(disp_dir, tmp_path / "task", config)

    _write_constant_fields(disp_dir, shapes, [np.zeros(2)] * 2)
    mov_csv = tmp_path / "task" / "landmarksTr" / f"{TASK}_0002_0001.csv"
    np.savetxt(mov_csv, np.loadtxt(mov_csv, delimiter=",")[:-1], delimiter=",")
    with pytest.raises(
        ValueError, match=rf"Landmark count mismatch: .*{TASK}_0002_0000.csv has 8 rows, .*0001.csv has 7"
    ):
        evaluate(disp_dir, tmp_path / "task", config)

    bad = dict(config, evaluation_methods=[*config["evaluation_methods"], {"name": "TRE_lm", "metric": "tre"}])
    with pytest.raises(ValueError, match="unique"):
        evaluate(disp_dir, tmp_path / "task", bad)


def test_make_config_without_landmarks_and_load_config(tmp_path):
    _make_task(tmp_path / "task", with_landmarks=False)
    descriptor = tmp_path / "task" / f"{TASK}_dataset.json"
    config = make_config(descriptor)
    assert [m["metric"] for m in config["evaluation_methods"]] == ["sdlogj"]
    assert config["eval_config_version"] == 0.2 and config["masked_evaluation"] is False
    assert load_config(descriptor) == config
    with pytest.raises(ValueError, match="registration_test"):
        make_config(descriptor, split="test")


def test_cli_end_to_end(tmp_path):
    shapes = ((40, 48), (38, 44))
    shifts = _make_task(tmp_path / "task", shapes)
    _write_constant_fields(tmp_path / "disp", shapes, [np.zeros(2), shifts[1]])
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(make_config(tmp_path / "task" / f"{TASK}_dataset.json")))
    out = tmp_path / "metrics.json"
    args = ["-i", tmp_path / "disp", "-d", tmp_path / "task", "-o", out, "-c", config_path, "-v"]
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    tre = [c["TRE_lm"]["mean"] for c in result["cases"].values()]
    np.testing.assert_allclose(tre, [np.linalg.norm(shifts[0]), 0.0], atol=1e-6)  # float32 fields
    assert "TRE_lm" in proc.stdout and "0001_0000<--0001_0001" in proc.stdout
    assert out.with_suffix(".csv").is_file()

    (tmp_path / "disp" / "disp_0002_0002.nii.gz").unlink()
    proc = subprocess.run([sys.executable, SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Missing files: ['disp_0002_0000_0002_0001 (or disp_0002_0002)']" in proc.stderr


def test_evaluate_3d_task(tmp_path):
    shape, shift = (9, 10, 11), np.array([1.5, -2.0, 0.5])
    root = tmp_path / "task"
    pair = {"fixed": f"./imagesTr/{TASK}_0001_0000.nii.gz", "moving": f"./imagesTr/{TASK}_0001_0001.nii.gz"}
    for role in ("fixed", "moving"):
        _save_nifti(root / pair[role], np.zeros(shape, np.uint8), (1.0, 2.0, 3.0))
    fix = _interior_lms(np.random.default_rng(7), shape, n=4, margin=3)
    (root / "landmarksTr").mkdir()
    for role, lms in (("fixed", fix), ("moving", fix + shift)):
        np.savetxt(root / pair[role].replace("images", "landmarks").replace(".nii.gz", ".csv"), lms, delimiter=",")
    descriptor = {"name": TASK, "tensorImageSize": {"0": "3D"}, "tensorImageShape": {"0": list(shape)}}
    (root / f"{TASK}_dataset.json").write_text(json.dumps({**descriptor, "registration_val": [pair]}))
    config = make_config(root / f"{TASK}_dataset.json")
    assert config["expected_shape"] == [9, 10, 11, 3]
    (tmp_path / "disp").mkdir()
    np.savez(tmp_path / "disp" / "disp_0001_0001.npz", np.zeros((*shape, 3)))
    case = evaluate(tmp_path / "disp", root, config)["cases"]["0001_0000<--0001_0001"]
    assert case["TRE_lm"]["mean"] == pytest.approx(np.linalg.norm(shift * [1.0, 2.0, 3.0]))
    assert case["LogJacDetStd"]["mean"] == 0.0 and case["num_foldings"]["mean"] == 0.0
