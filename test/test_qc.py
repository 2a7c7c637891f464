"""fide.qc: per-pair pictures, the summary page, and ``fide register --qc`` on a real (fast) registration."""

import json

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST_CONFIG

from fide import geometry
from fide.cli.main import main
from fide.io import load_dataset, read_disp, read_image, read_landmark_pair
from fide.qc import QCRecorder, pair_tre, qc_figure, qc_summary


@pytest.fixture(scope="module")
def task(tiny_task):
    return load_dataset(tiny_task)


def _gt(task, pair):
    return read_disp(task.root / "groundtruth" / pair.disp_name)


def test_qc_figure_with_landmarks(task, tmp_path):
    pair = task.split("val")[0]
    fixed, moving = read_image(pair.fixed), read_image(pair.moving)
    landmarks = read_landmark_pair(*pair.landmarks())
    out = qc_figure(fixed, moving, _gt(task, pair), tmp_path / "qc/a.png", landmarks, title="pair a")
    picture = matplotlib.image.imread(out)
    assert picture.ndim == 3 and picture.shape[0] > 300 and picture.shape[1] > 500
    assert picture[..., :3].std() > 0.05  # not blank


def test_qc_figure_downsamples_large_and_mismatched_images(tmp_path):
    fixed = torch.rand(1, 300, 240) * 255
    moving = torch.rand(3, 200, 260) * 255
    affine = torch.tensor([[[0.8, 0.1, 5.0], [0.0, 0.9, -3.0], [0.0, 0.0, 1.0]]])
    disp = geometry.affine_to_disp(affine, (300, 240))
    landmarks = (np.array([[10.0, 20.0], [150.0, 100.0]]), np.array([[12.0, 21.0], [140.0, 90.0]]))
    assert qc_figure(fixed, moving, disp, tmp_path / "b.png", landmarks, failed=True, max_px=64).is_file()


def test_qc_figure_rejects_a_field_of_the_wrong_size(tmp_path):
    with pytest.raises(ValueError, match=r"disp must be \(1, 2, 32, 32\)"):
        qc_figure(torch.zeros(1, 32, 32), torch.zeros(3, 32, 32), torch.zeros(2, 16, 16), tmp_path / "c.png")


def test_pair_tre_is_zero_for_the_ground_truth(task):
    pair = task.split("val")[0]
    assert pair_tre(pair, _gt(task, pair)).max() < 0.05
    assert pair_tre(pair, torch.zeros_like(_gt(task, pair))).mean() > 1


def test_summary_with_and_without_landmarks(tmp_path):
    table = pd.DataFrame(
        {
            "pair": ["a", "b", "c"],
            "status": ["ok", "failed", "flagged"],
            "seconds": [1.0, 0.1, 2.0],
            "quality": [0.3, float("nan"), 0.01],
            "message": ["", "image file not found", "low NMI 0.010"],
        }
    )
    assert qc_summary(table, {"a": 1.2, "b": 30.0, "c": 4.0}, tmp_path / "s.png").is_file()
    assert qc_summary(table, {}, tmp_path / "t.png").is_file()
    with pytest.raises(ValueError, match="status"):
        qc_summary(table.drop(columns="status"), {}, tmp_path / "u.png")


def test_recorder_draws_failed_pairs_from_the_written_field(task, tmp_path):
    pairs = task.split("val")
    table = pd.DataFrame(
        {"pair": [p.name for p in pairs], "status": ["ok", "failed"], "seconds": [1.0, 0.5]}
        | {"quality": [0.2, float("nan")], "message": ["", "RuntimeError: boom"]}
    )
    from fide.io import write_disp

    for pair in pairs:
        write_disp(tmp_path / "out" / pair.disp_name, _gt(task, pair) if pair is pairs[0] else torch.zeros(2, 96, 96))
    recorder = QCRecorder(tmp_path / "out/qc")
    summary = recorder.finish(pairs, table, tmp_path / "out")
    assert summary.is_file() and all(recorder.png_path(p).is_file() for p in pairs)
    assert recorder.tre[pairs[0].name] < 0.05 < recorder.tre[pairs[1].name]
    assert "RuntimeError: boom" in (tmp_path / "out/qc/index.html").read_text()


def test_register_qc_end_to_end(task, tmp_path, fast_engine):
    """A real (fast) registration with --qc, beside a pair whose moving image is missing."""
    import shutil

    root = shutil.copytree(task.root, tmp_path / "task")
    pairs = load_dataset(root / task.path.name).split("val")
    pairs[1].moving.unlink()
    config = tmp_path / "fast.json"
    config.write_text(json.dumps(FAST_CONFIG))
    out = tmp_path / "out"
    args = ["register", str(root / task.path.name), "-o", str(out), "--config", str(config), "--stages", "affine"]
    assert main([*args, "--qc"]) == 1  # one pair failed
    pictures = sorted(p.name for p in (out / "qc").glob("*.png"))
    assert pictures == [f"{pairs[0].disp_name.removesuffix('.nii.gz')}.png", "summary.png"]
    index = (out / "qc/index.html").read_text()
    assert "failed" in index and "image file not found" in index
