"""``fide align`` from the command line: one pair and a pairs.csv batch, scored through transform.tfm."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import tifffile
import torch
from conftest import FAST_CONFIG, blob_pair, move, similarity

import fide
from fide import geometry
from fide.cli.main import main

SIZE = 128


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A blob pair as TIFFs at 2:1 pixel sizes (OME metadata), the moving name with a space; true landmarks."""
    root = tmp_path_factory.mktemp("align")
    shg, bf = blob_pair(SIZE, seed=3)
    truth = similarity(20.0, 1.0, SIZE, shift=(3.0, -2.0))
    moving = move(bf, truth, 242.0).permute(2, 1, 0).numpy()  # (rows, columns, 3)
    half = moving.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean((1, 3)).round().astype(np.uint8)
    tifffile.imwrite(
        root / "shg.tif",
        shg[0].numpy().T.round().astype(np.uint8),
        metadata={"PhysicalSizeX": 1.0, "PhysicalSizeY": 1.0},
        ome=True,
    )
    tifffile.imwrite(
        root / "bright field.tif",
        half,
        photometric="rgb",
        metadata={"PhysicalSizeX": 2.0, "PhysicalSizeY": 2.0},
        ome=True,
    )
    fixed_pts = np.array([[40.0, 50.0], [80.0, 70.0], [64.0, 64.0], [50.0, 90.0]])
    moving_full = geometry.apply_affine_to_points(truth.double(), torch.from_numpy(fixed_pts)).numpy()
    (root / "cfg.json").write_text(json.dumps(FAST_CONFIG))
    return root, fixed_pts, (moving_full + 0.5) / 2 - 0.5  # landmarks on the half-size moving grid


def _tre_through_tfm(folder, fixed_file, moving_file, fixed_pts, moving_pts):
    """Landmark error (moving pixels) of transform.tfm, in the physical spaces SimpleITK reads the files in."""
    transform = sitk.ReadTransform(str(folder / "transform.tfm"))
    fixed, moving = sitk.ReadImage(str(fixed_file)), sitk.ReadImage(str(moving_file))
    mapped = [
        moving.TransformPhysicalPointToContinuousIndex(
            transform.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint(tuple(map(float, p))))
        )
        for p in fixed_pts
    ]
    return float(np.linalg.norm(np.array(mapped) - moving_pts, axis=1).mean())


def _align(*args):
    return main(["align", *map(str, args), "--working-size", str(SIZE)])


def test_one_pair_writes_every_output_and_matches_the_python_api(files, tmp_path, capsys, fast_engine):
    root, fixed_pts, moving_pts = files
    out = tmp_path / "out"
    assert (
        _align(root / "shg.tif", root / "bright field.tif", "-o", out, "--inverse", "--config", root / "cfg.json") == 0
    )
    names = {p.name for p in out.iterdir()}
    expected = {
        "transform.tfm",
        "transform.json",
        "disp.nii.gz",
        "moving_warped.ome.tif",
        "fixed_warped.ome.tif",
        "qc.png",
    }
    assert names == expected
    assert "quality" in capsys.readouterr().out
    assert _tre_through_tfm(out, root / "shg.tif", root / "bright field.tif", fixed_pts, moving_pts) < 0.5
    warped = tifffile.imread(out / "moving_warped.ome.tif")
    assert warped.shape == (SIZE, SIZE, 3) and warped.dtype == np.uint8
    reg = fide.register(root / "shg.tif", root / "bright field.tif", FAST_CONFIG, working_px=SIZE, seed=0)
    assert np.allclose(json.loads((out / "transform.json").read_text())["pixel"]["matrix"], reg.affine, atol=1e-9)


def test_pixel_size_flags_stand_in_for_missing_metadata(files, tmp_path, fast_engine):
    root, fixed_pts, moving_pts = files
    for name in ("shg.tif", "bright field.tif"):  # the same pixels without metadata
        tifffile.imwrite(tmp_path / name, tifffile.imread(root / name), photometric="rgb" if "bright" in name else None)
    out = tmp_path / "out"
    args = ["-o", out, "--config", root / "cfg.json", "--fixed-pixel-size", "0.5", "--moving-pixel-size", "1.0"]
    assert _align(tmp_path / "shg.tif", tmp_path / "bright field.tif", *args) == 0
    assert _tre_through_tfm(out, tmp_path / "shg.tif", tmp_path / "bright field.tif", fixed_pts, moving_pts) < 0.5


def test_pairs_csv_batch_isolates_failures_resumes_and_shards(files, tmp_path, fast_engine):
    root, fixed_pts, moving_pts = files
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(
        {
            "fixed": [root / "shg.tif", root / "shg.tif", root / "shg.tif"],
            "moving": [root / "bright field.tif", root / "missing.tif", root / "bright field.tif"],
            "name": ["core 1", "broken", "core 3"],
        }
    ).to_csv(csv, index=False)
    out = tmp_path / "out"
    assert _align("--pairs", csv, "-o", out, "--config", root / "cfg.json") == 1  # one pair failed
    table = pd.read_csv(out / "results.csv", keep_default_na=False).set_index("pair")
    assert table.loc["core 1", "status"] == "ok" and table.loc["core 3", "status"] == "ok"
    assert (
        table.loc["broken", "status"] == "failed"
        and "missing.tif: image file not found" in table.loc["broken", "message"]
    )
    assert not (out / "broken").exists()
    for name in ("core 1", "core 3"):
        assert _tre_through_tfm(out / name, root / "shg.tif", root / "bright field.tif", fixed_pts, moving_pts) < 0.5
    stamp = (out / "core 1" / "transform.json").stat().st_mtime_ns
    assert _align("--pairs", csv, "-o", out, "--config", root / "cfg.json") == 1  # resume: only "broken" retried
    assert (out / "core 1" / "transform.json").stat().st_mtime_ns == stamp
    again = pd.read_csv(out / "results.csv", keep_default_na=False).set_index("pair")
    assert again.loc["core 1", "status"] == "ok" and again.loc["broken", "status"] == "failed"
    shards = tmp_path / "shards"
    assert _align("--pairs", csv, "-o", shards, "--config", root / "cfg.json", "--shard", "1/2") == 1  # "broken"
    assert (shards / "results.shard-1-of-2.csv").is_file() and not (shards / "core 1").exists()
    assert _align("--pairs", csv, "-o", shards, "--config", root / "cfg.json", "--shard", "0/2") == 0
    assert _align("--pairs", csv, "-o", shards, "--merge-shards") == 1  # merged; "broken" failed
    assert len(pd.read_csv(shards / "results.csv")) == 3


def test_bad_command_lines_and_files_fail_with_one_line(files, tmp_path, caplog):
    root = files[0]
    with pytest.raises(SystemExit, match="FIXED MOVING, or --pairs"):
        _align(root / "shg.tif", "-o", tmp_path)
    (tmp_path / "bad.tif").write_bytes(b"II*\x00nonsense")
    assert _align(root / "shg.tif", tmp_path / "bad.tif", "-o", tmp_path / "o") == 2
    assert "bad.tif: cannot read TIFF" in caplog.text
    assert not (tmp_path / "o").exists()


def test_example_pair_writes_a_pair_at_two_to_one_with_landmarks(tmp_path):
    assert main(["example-pair", str(tmp_path), "--size", "64"]) == 0
    fixed, moving = (
        sitk.ReadImage(str(tmp_path / "shg.ome.tif")),
        sitk.ReadImage(str(tmp_path / "bright field.ome.tif")),
    )
    assert fixed.GetSize() == (64, 64) and moving.GetSize() == (32, 32) and moving.GetNumberOfComponentsPerPixel() == 3
    assert fixed.GetSpacing() == pytest.approx((0.5e-3, 0.5e-3)) and moving.GetSpacing() == pytest.approx((1e-3, 1e-3))
    assert list(pd.read_csv(tmp_path / "landmarks.csv").columns) == ["fixed_x", "fixed_y", "moving_x", "moving_y"]
    shutil.rmtree(tmp_path)


@pytest.mark.slow
def test_readme_worked_example_runs_as_written(tmp_path, monkeypatch):
    """The README's "your own images" commands and Python lines, default configuration, on `fide example-pair`."""
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    assert main(["example-pair", "pair/"]) == 0
    assert main(["align", "pair/shg.ome.tif", "pair/bright field.ome.tif", "-o", "aligned/", "--inverse"]) == 0
    assert main(["align", "--pairs", "pair/pairs.csv", "-o", "batch/"]) == 0
    script = Path(__file__).parents[1] / "benchmarks" / "align_tre.py"
    for args in (["pair/pairs.csv", "aligned/", "--flat"], ["pair/pairs.csv", "batch/"]):
        printed = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, check=True)
        assert "1/1 pairs under 2.0 px" in printed.stdout
    columns = ["--columns", "moving_x,moving_y"]
    assert main(["transform", "aligned/", "pair/landmarks.csv", "-o", "on_shg.csv", *columns]) == 0
    assert main(["transform", "aligned/", "on_shg.csv", "-o", "back.csv", *columns, "--inverse"]) == 0
    landmarks, on_shg, back = (pd.read_csv(p) for p in ("pair/landmarks.csv", "on_shg.csv", "back.csv"))
    error = np.linalg.norm(
        on_shg[["moving_x", "moving_y"]].to_numpy() - landmarks[["fixed_x", "fixed_y"]].to_numpy(), axis=1
    )
    assert error.mean() < 2.0  # SHG pixels (0.5 µm)
    assert (
        np.abs(back[["moving_x", "moving_y"]].to_numpy() - landmarks[["moving_x", "moving_y"]].to_numpy()).max() < 1e-3
    )
    assert fide.load("aligned/").transform_points([[120.0, 80.0]]).shape == (1, 2)
    reg = fide.register("pair/shg.ome.tif", "pair/bright field.ome.tif")
    assert reg.warp().shape == (512, 512, 3) and reg.warp_points([[120.0, 80.0]]).shape == (1, 2)
    reg.save("again/")
    assert np.allclose(json.loads(Path("again/transform.json").read_text())["pixel"]["matrix"], reg.affine)


def test_pairs_csv_on_dask_gives_the_folders_of_the_serial_run(files, tmp_path, monkeypatch):
    """``fide align --pairs --dask local:1`` (a real, fast registration in a worker process of 1 thread) against
    this process (1 thread): the same fields bit for bit, the same table but for the seconds; the missing image
    fails its pair alone."""
    pytest.importorskip("distributed")
    import fide.executors.dask_cluster as dask_cluster
    from fide.io import read_disp

    monkeypatch.setattr(dask_cluster, "available_cpus", lambda: 1)  # fide align has no --threads
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    root = files[0]
    csv = tmp_path / "pairs.csv"
    moving = [root / "bright field.tif", root / "missing.tif"]
    pd.DataFrame({"fixed": [root / "shg.tif"] * 2, "moving": moving, "name": ["a", "b"]}).to_csv(csv, index=False)
    for out, extra in (("one", []), ("dask", ["--dask", "local:1"])):
        assert _align("--pairs", csv, "-o", tmp_path / out, "--config", root / "cfg.json", "--seed", "0", *extra) == 1
    one, dask = (pd.read_csv(tmp_path / o / "results.csv", keep_default_na=False) for o in ("one", "dask"))
    pd.testing.assert_frame_equal(one.drop(columns="seconds"), dask.drop(columns="seconds"))
    assert one["status"].tolist() == ["ok", "failed"]
    fields = [read_disp(tmp_path / o / "a" / "disp.nii.gz") for o in ("one", "dask")]
    assert torch.equal(*fields)
