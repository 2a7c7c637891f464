"""Benchmark baselines (benchmarks/baselines.py) and a smoke run of benchmarks/run.py.

The axis tests register an image to a copy of itself shifted along array axis 0 only: a wrapper that forgets that
ITK's index order (x = column, y = row) is the reverse of fide's array order puts the shift into component 1.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import baselines  # noqa: E402

SHIFT_ROWS = 5.0  # moving = fixed shifted by +5 rows: moving(p + (5, 0)) = fixed(p), so disp = (+5, 0)


def _texture(size: int = 96, seed: int = 0) -> np.ndarray:
    """Smooth random texture on an off-centre blob: asymmetric, so every shift is identifiable."""
    rng = np.random.default_rng(seed)
    texture = ndimage.gaussian_filter(rng.random((size, size)), 3)
    rows, cols = np.mgrid[:size, :size]
    blob = np.exp(-(((rows - 0.45 * size) / (0.3 * size)) ** 2 + ((cols - 0.55 * size) / (0.25 * size)) ** 2))
    image = blob * (0.5 + (texture - texture.min()) / np.ptp(texture))
    return (255 * image / image.max()).astype(np.float32)


def _shifted_pair() -> tuple[np.ndarray, np.ndarray]:
    fixed = _texture()
    moving = ndimage.shift(fixed, (SHIFT_ROWS, 0.0), order=1, mode="nearest").astype(np.float32)
    return fixed, moving


def _centre_disp(disp: np.ndarray) -> np.ndarray:
    """Median displacement over the central half of the grid, (2,) array order."""
    height, width = disp.shape[1:]
    return np.median(disp[:, height // 4 : 3 * height // 4, width // 4 : 3 * width // 4], axis=(1, 2))


def test_itk_field_to_disp_reverses_components():
    field = np.zeros((4, 6, 2), dtype=np.float32)
    field[..., 0] = 1.0  # ITK x = column
    field[..., 1] = 2.0  # ITK y = row
    disp = baselines.itk_field_to_disp(field)
    assert disp.shape == (2, 4, 6)
    assert np.all(disp[0] == 2.0) and np.all(disp[1] == 1.0)
    with pytest.raises(ValueError, match="field must have shape"):
        baselines.itk_field_to_disp(np.zeros((4, 6, 3)))


def test_grey_channel_choices():
    shg = torch.full((1, 8, 8), np.e - 1)
    assert np.allclose(baselines.grey_channel(shg, 3), 1.0)  # log(1 + x)
    white = torch.full((3, 8, 8), 255.0)
    assert np.allclose(baselines.grey_channel(white, 3), 0.0, atol=1e-4)  # inverted luminance of white
    assert np.allclose(baselines.grey_channel(white, 1), 0.0, atol=1e-3)  # no eosin in white
    pink = torch.tensor([230.0, 120.0, 200.0]).view(3, 1, 1).expand(3, 8, 8)
    assert baselines.grey_channel(pink, 1).min() > 0.05  # eosin-rich
    with pytest.raises(ValueError, match="partner_channels"):
        baselines.grey_channel(shg, 2)


def test_simpleitk_affine_axis_convention():
    fixed, moving = _shifted_pair()
    disp = baselines.simpleitk_affine_disp(fixed, moving)
    assert disp.shape == (2, *fixed.shape) and disp.dtype == np.float32
    centre = _centre_disp(disp)
    assert abs(centre[0] - SHIFT_ROWS) < 0.5, centre
    assert abs(centre[1]) < 0.5, centre


@pytest.mark.skipif(baselines.elastix_available() is not None, reason="itk-elastix not installed")
@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")  # itk's SWIG
@pytest.mark.parametrize("maps", [("affine",), ("affine", "bspline")])
def test_elastix_axis_convention(maps, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixed, moving = _shifted_pair()
    disp = baselines.elastix_disp(fixed, moving, maps=maps)
    assert not any(tmp_path.iterdir())  # transformix writes deformationField.nii to its output folder, not here
    assert disp.shape == (2, *fixed.shape) and disp.dtype == np.float32
    centre = _centre_disp(disp)
    assert abs(centre[0] - SHIFT_ROWS) < 0.5, centre
    assert abs(centre[1]) < 0.5, centre


def test_benchmark_smoke(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(BENCH_DIR / "run.py"), "--tasks", "synthetic,mirror", "--synthetic-pairs", "1"]
    command += ["--size", "128", "--methods", "zero,simpleitk-affine", "--cache", str(tmp_path / "cache")]
    command += ["--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "SimpleITK affine (MI)" in completed.stdout
    table = pd.read_csv(out / "benchmark.csv", keep_default_na=False)
    assert list(table["method"]) == ["zero field", "SimpleITK affine (MI)"] * 2
    assert list(table["task"]) == ["synthetic", "synthetic", "mirror", "mirror"]
    assert set(table["< 2 px"]) <= {"0/1", "1/1"}
    zero = table[table["method"] == "zero field"]
    # the zero field is never flagged (it has no confidence), so a pair it leaves far off is a trusted wrong result
    assert set(zero["flagged"]) == {"0/1"} and set(zero["> 5 px not flagged"].astype(str)) == {"1"}
    assert (tmp_path / "cache" / "synth-128px-1pairs-seed2025-mirror" / ".complete").is_file()
    assert (table["mean TRE"].astype(float) > 0).all() and (table["peak MB"].astype(float) > 50).all()
    assert (out / "synthetic" / "simpleitk-affine" / "disp_0001_0001.nii.gz").is_file()
    assert (out / "benchmark.md").read_text().count("\n|") >= 3


def test_missing_elastix_skips_its_rows(monkeypatch, tmp_path):
    import run as benchmark

    def not_installed(name):
        raise baselines.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(baselines.importlib.metadata, "version", not_installed)
    reason = baselines.elastix_available()
    assert reason is not None and "benchmarks/requirements.txt" in reason
    row = benchmark._row("synthetic", "elastix-bspline", tmp_path / "none.json", tmp_path, args=None)
    assert row["note"] == f"skipped: {reason}" and row["method"] == "elastix affine+B-spline (MI)"
    assert not any(tmp_path.iterdir())  # nothing was run


def test_method_registry():
    import methods

    assert set(methods.DEFAULT_METHODS) <= set(methods.METHODS)
    assert methods.METHODS["fide-prealign"].label == "fide (stages=prealign)"
    assert methods.look_up_methods("all") == list(methods.METHODS)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown methods"):
        methods.look_up_methods("zero,nonsense")


@pytest.mark.parametrize(
    ("name", "stages", "deformable", "mirror"),
    [
        ("fide", "deformable", False, "auto"),
        ("fide-deformable", "deformable", True, "auto"),
        ("fide-prealign", "prealign", False, "auto"),
        ("fide-no-mirror", "deformable", False, "never"),
        ("fide-challenge", "deformable", False, "never"),
    ],
)
def test_fide_rows_pass_their_configuration(name, stages, deformable, mirror, monkeypatch, tmp_path):
    import methods

    seen = {}

    def fake_register_pairs(pairs, out, cfg, **kwargs):
        seen["cfg"] = cfg
        return pd.DataFrame()

    monkeypatch.setattr(methods, "register_pairs", fake_register_pairs)
    methods.METHODS[name].run([], tmp_path, methods.RunOptions(features="handcrafted"))
    assert seen["cfg"].stages == stages and seen["cfg"].deformable.enabled is deformable
    assert seen["cfg"].search.mirror == mirror
    assert seen["cfg"].search.max_rotation_deg == (20.0 if name == "fide-challenge" else 180.0)


def test_soak_task_gives_every_listed_pair_its_own_case(tmp_path):
    """benchmarks/soak.py: N listed pairs over D distinct images stay N separate pairs (not deduplicated)."""
    import soak

    from fide.io import load_dataset
    from fide.io.dataset import unique_pairs

    descriptor = soak._long_task(tmp_path / "cache", tmp_path / "task", pairs=5, distinct=2, size=32)
    pairs = load_dataset(descriptor).split("val")
    assert len(unique_pairs(pairs)) == 5 and len({p.disp_name for p in pairs}) == 5


def test_soak_compares_each_process_over_the_same_distinct_pairs():
    """benchmarks/soak.py: a flat worker whose large distinct pair came only late shows no growth (windows of its first
    and last 3 pairs would: 800 -> 900); a worker that grows does; readings up to case ``early`` do not count."""
    import soak

    size = {0: 800.0, 1: 900.0}  # distinct pair 1 needs more memory than pair 0, every time
    flat = [(1, case, size[case % 2]) for case in (4, 6, 8, 5, 10, 7, 9, 11, 13)]  # its first 3: pair 0, last 3: pair 1
    growing = [(2, case, 700.0 + case) for case in (1, 2, 12, 14, 16, 15)]  # 1, 2: not after pair 2
    rss = flat + growing
    assert soak._matched(rss, early=2, distinct=2) == {1: (900.0, 900.0, 2), 2: (712.0, 716.0, 1)}
    early, late, worst = soak._rss_cells(rss, early=2, distinct=2)
    assert (early, late, worst) == ("900 (2) / 712 (1)", "900 / 716", f"{716 / 712:.3f}")
    assert soak._matched([(1, 3, 800.0), (1, 4, 900.0)], early=2, distinct=2) == {}  # nothing registered twice


def test_concurrency_children_get_fides_own_thread_defaults(monkeypatch):
    import concurrency

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not {"OMP_NUM_THREADS", "OMP_WAIT_POLICY"} & set(concurrency._environment("default"))
    assert concurrency._environment("active")["OMP_WAIT_POLICY"] == "ACTIVE"


def test_dev_tasks_summary_counts_and_comparison():
    """benchmarks/dev_tasks.py: per-task counts from per-pair rows, and the pairs a change moved across 2 px."""
    import dev_tasks

    before = pd.DataFrame(
        {
            "task": ["a", "a", "a", "b"],
            "pair": ["p1", "p2", "p3", "q1"],
            "tre": [0.5, 1.5, 40.0, 7.0],
            "status": ["ok", "flagged", "flagged", "ok"],
            "seconds": [1.0, 2.0, 3.0, 4.0],
        }
    )
    table = dev_tasks.summary(before)
    assert table.loc["a", "< 2 px"] == 2 and table.loc["a", "flagged"] == 2 and table.loc["a", "< 2 px flagged"] == 1
    assert table.loc["b", "> 5 px not flagged"] == 1 and table.loc["all", "pairs"] == 4
    assert table.loc["a", "s/pair"] == pytest.approx(2.0)
    after = before.assign(tre=[0.5, 1.5, 0.4, 7.0], status=["ok", "ok", "ok", "flagged"])
    lines = dev_tasks.compare(before, after).splitlines()
    assert lines[0] == "a: mean TRE 14.000 -> 0.800 px"
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["p2", "p3", "b", "q1"]
    # the development seeds are never the benchmark's
    assert all(seed != 2025 for _, seed, _, _ in dev_tasks.DEV_TASKS.values())


def test_align_memory_pair_is_an_enlarged_pyramid_at_half_a_micron(tmp_path, monkeypatch):
    """benchmarks/align_memory.py writes its S x S pair through fide.synth.enlarged (bilinear, tiled pyramid):
    S x S grey and RGB at 0.5 µm, levels halving down to <= 1024 px (a 64 px render keeps the test fast)."""
    import align_memory
    import tifffile

    monkeypatch.setattr(align_memory, "_PICTURE_PX", 64)
    fixed, moving = align_memory.write_pair(tmp_path, 2100)
    for path, channels in ((fixed, ()), (moving, (3,))):
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            assert [level.shape[:2] for level in series.levels] == [(2100, 2100), (1050, 1050), (525, 525)]
            assert series.levels[0].shape[2:] == channels
            assert 'PhysicalSizeX="0.5"' in tif.ome_metadata


def test_criterion_peak_finds_a_known_turn_and_scale():
    """benchmarks/criterion_peak.py: at an exactly affine pair's truth the label NMI's optimum is the truth; a pose
    turned by 0.3° and scaled by 1 % after the truth is read back as the opposite turn and scale."""
    import criterion_peak

    from fide import geometry
    from fide.config import FideConfig
    from fide.pair import prepare_inputs
    from fide.synth.task import make_pair

    pair = make_pair("val", 0, 192, 3, regime="core", warp_px=0.0)
    images = (torch.from_numpy(pair[k]).float() for k in ("fixed", "moving"))
    inputs, _ = prepare_inputs(*images, FideConfig(), None, None)
    truth = geometry.fit_affine(torch.from_numpy(pair["disp"]).float()[None])[0]
    assert criterion_peak.landmark_tre(truth, pair["fixed_points"], pair["moving_points"]) < 0.01

    at_truth = criterion_peak.criterion_peak(inputs, truth, 384)
    assert at_truth["shift_px"] < 0.5 and abs(at_truth["angle_deg"]) < 0.1 and abs(at_truth["scale"] - 1) < 0.003

    centre = torch.tensor([95.5, 95.5])
    local = geometry.similarity_matrix(torch.deg2rad(torch.tensor([0.3])), torch.tensor([1.01]), centre, centre)[0]
    off = truth @ local
    angle, scale = criterion_peak.relative_pose(truth, off)
    assert angle == pytest.approx(0.3, abs=1e-4) and scale == pytest.approx(1.01, abs=1e-5)
    found = criterion_peak.criterion_peak(inputs, off, 384)
    assert found["angle_deg"] == pytest.approx(-0.3, abs=0.1)
    assert found["scale"] == pytest.approx(1 / 1.01, abs=0.003)
